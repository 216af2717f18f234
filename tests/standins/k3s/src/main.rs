//! The `k3s` stand-in executable: a test double for the K3s binary's service contract,
//! not K3s. Everything lives in the library (`k3s_standin::cli`).

fn main() {
    // Lossy: K3s flags and paths in tests are UTF-8; a stray invalid byte should not panic.
    let args = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    std::process::exit(k3s_standin::cli::main(args));
}

//! `elysium-node`: one binary for nodes (join, agent), the coordinator and its admins.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = elysium_node::Cli::parse();
    elysium_node::init_tracing(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(elysium_node::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // The whole chain, once, at the edge; escaped, as errors can quote
            // what a node or the coordinator sent.
            use elysium_node::term::printable_lines;
            eprintln!("error: {}", printable_lines(&e.to_string()));
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {}", printable_lines(&cause.to_string()));
            }
            ExitCode::FAILURE
        }
    }
}

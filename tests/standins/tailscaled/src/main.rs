//! `tailscaled-standin --socket PATH --keys-file FILE [--userspace] [--ipv4 A]`:
//! the stand-in as a process, for real-systemd test nodes (`tailscaled.service`).
//! The keys file lists the auth keys the scripted control server accepts, one
//! per line.

use std::collections::BTreeSet;
use std::time::Duration;

use tailscaled_standin::{Options, Tailscaled};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut socket = std::path::PathBuf::from("/var/run/tailscale/tailscaled.sock");
    let mut opts = Options { start_delay: Duration::from_millis(500), ..Options::default() };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--socket" => socket = args.next().unwrap_or_default().into(),
            "--keys-file" => {
                let text = std::fs::read_to_string(args.next().unwrap_or_default())?;
                opts.valid_keys = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect::<BTreeSet<_>>();
            }
            "--userspace" => opts.tun = false,
            "--ipv4" => opts.ipv4 = args.next().unwrap_or_default(),
            other => {
                eprintln!("tailscaled-standin: unknown argument {other:?}");
                std::process::exit(2);
            }
        }
    }
    let _daemon = Tailscaled::start(&socket, opts).await?;
    eprintln!("tailscaled-standin listening on {}", socket.display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

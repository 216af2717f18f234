//! Preflight time on the classic snapshot (74291b2, tests/fixtures/cluster-repo) and on the
//! today-layout fixture (recovery/tests/common/today.rs), each a local Git repository
//! cloned by the preflight as in a real run. Prints the median and range of N runs (5 by
//! default, `PREFLIGHT_RUNS`), run alternately so load drifts hit both alike.
//!
//! ```sh
//! cargo bench -p elysium-recovery --bench preflight
//! ```

#[path = "../tests/common/mod.rs"]
#[allow(dead_code, unused_imports)]
mod common;

use std::time::{Duration, Instant};

use common::*;

fn median(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let runs: usize = std::env::var("PREFLIGHT_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let (a, b) = keys();
    let work = tempfile::tempdir().expect("tempdir");
    let keys_file = write_keys_file(
        work.path(),
        &keys_list(&[
            KeySecret::active("sealed-secrets-keya1b2c", a),
            KeySecret::active("sealed-secrets-keyolder", b),
        ]),
    );
    let (classic, _) = repo_resealed_with(a, true, true);
    let (today, _) = today::repo(a, b);
    let cases =
        [("classic snapshot 74291b2", classic.path()), ("today layout (Flux Operator)", today.path())];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    let mut facts = vec![String::new(); cases.len()];
    for _ in 0..runs {
        for (i, (_, repo)) in cases.iter().enumerate() {
            let opts = options(repo, &keys_file);
            let t = Instant::now();
            let p = preflight(&opts);
            times[i].push(t.elapsed());
            assert!(p.report.verdict.is_ok(), "{}", p.report);
            facts[i] = format!(
                "{} SealedSecrets, {} layers, bootstrap {:?}",
                p.report.sealed_secrets.len(),
                p.order.len(),
                p.bootstrap.form
            );
        }
    }
    println!("preflight, {runs} runs each, alternating");
    for (i, (name, _)) in cases.iter().enumerate() {
        let (m, lo, hi) = median(times[i].clone());
        println!("  {name:<30} median {}  ({} – {})  [{}]", ms(m), ms(lo), ms(hi), facts[i]);
    }
}

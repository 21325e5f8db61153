//! The chaos suite as part of `cargo test`: a short seeded run (SWITCHYARD_CHAOS_SECS, 75 s
//! by default; `bench/chaos.sh MINUTES` runs it long). Skipped, saying why, only where
//! network namespaces cannot be made.

use switchyard_tests::chaos::net::NetError;
use switchyard_tests::chaos::run::{run, Settings};
use switchyard_tests::serial;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_no_acknowledged_write_serve_no_stale_read_and_drop_no_connection() {
    let _g = serial().await;
    let settings = Settings::from_env(75);
    let outcome = match run(settings).await {
        Ok(o) => o,
        Err(NetError::Unavailable(why)) => {
            println!("skipped: the chaos suite needs network namespaces (root and `ip`): {why}");
            return;
        }
        Err(e) => panic!("building the chaos network failed: {e}"),
    };
    println!("chaos: seed {}\n{}", settings.seed, outcome.report);
    assert!(
        outcome.violations.is_empty(),
        "{} violations (replay with SWITCHYARD_CHAOS_SEED={}):\n{}",
        outcome.violations.len(),
        settings.seed,
        outcome.violations.join("\n")
    );
}

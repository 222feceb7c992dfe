//! Helpers for integration tests: regtest nodes on `127.0.0.1` with an OS
//! port in a temp dir, and polling with a deadline instead of fixed sleeps.
//!
//! Only tests and the benchmarks use this module; the daemon never calls it.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use protocol::{Address, ChainParams};

use crate::jobs::AuditConfig;
use crate::node::{start, NodeConfig, NodeError, RunningNode};

/// The loopback listen address with an OS-chosen port.
pub fn loopback() -> Multiaddr {
    // A constant that always parses.
    "/ip4/127.0.0.1/tcp/0"
        .parse()
        .unwrap_or_else(|_| Multiaddr::empty())
}

/// A regtest config in `dir` listening on loopback, p2p and HTTP on
/// ports the system picks.
pub fn regtest_config(dir: &Path, bootstrap: Vec<Multiaddr>) -> NodeConfig {
    let mut config = NodeConfig::new(dir.to_owned(), ChainParams::regtest());
    config.listen = vec![loopback()];
    config.bootstrap = bootstrap;
    config.http = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    config
}

/// Starts a regtest node in `dir`, mining to `miner` every `interval` when
/// given.
pub async fn start_regtest(
    dir: &Path,
    bootstrap: Vec<Multiaddr>,
    mine: Option<(Address, Duration)>,
) -> Result<RunningNode, NodeError> {
    let mut config = regtest_config(dir, bootstrap);
    if let Some((address, interval)) = mine {
        config.mine = Some(address);
        config.mine_interval = interval;
    }
    start(config).await
}

/// Starts a regtest node like [`start_regtest`] that audits pending
/// results with `audit`.
pub async fn start_regtest_auditing(
    dir: &Path,
    bootstrap: Vec<Multiaddr>,
    mine: Option<(Address, Duration)>,
    audit: AuditConfig,
) -> Result<RunningNode, NodeError> {
    let mut config = regtest_config(dir, bootstrap);
    if let Some((address, interval)) = mine {
        config.mine = Some(address);
        config.mine_interval = interval;
    }
    config.audit = audit;
    start(config).await
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes;
/// the error names `what` was awaited.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Installs a test log subscriber once (`RUST_LOG` filters it).
pub fn init_test_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

//! The node's Prometheus metrics (`/metrics` on the HTTP API), on the
//! `prometheus-client` crate, registered in the same registry libp2p's own
//! metrics record into.
//!
//! Counters and histograms are updated where things happen (the chain task,
//! the miner, the auditor, the verifier); gauges of the current state
//! (height, peers, mempool, jobs by status, blob bytes) are read when
//! `/metrics` is scraped, so nothing polls between scrapes.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A label set: `(name, value)` pairs.
pub type Labels = Vec<(String, String)>;

/// One label.
pub fn label(name: &str, value: &str) -> Labels {
    vec![(name.to_owned(), value.to_owned())]
}

/// Every metric the node records itself.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Height of the tip.
    pub height: Gauge,
    /// Cumulative work of the main chain (as a float: Prometheus has no
    /// 256-bit numbers).
    pub total_work: Gauge<f64, AtomicU64>,
    /// Connected peers.
    pub peers: Gauge,
    /// Transactions in the mempool.
    pub mempool_transactions: Gauge,
    /// Encoded bytes in the mempool.
    pub mempool_bytes: Gauge,
    /// Blocks this node mined that the chain took.
    pub blocks_mined: Counter,
    /// Blocks the chain stored (main chain or side branch), from anyone.
    pub blocks_accepted: Counter,
    /// Blocks refused, by reason.
    pub blocks_rejected: Family<Labels, Counter>,
    /// Gossiped blocks forwarded before their full validation.
    pub blocks_relayed_early: Counter,
    /// Of those, blocks whose validation then failed.
    pub blocks_relayed_early_invalid: Counter,
    /// Main-chain switches to another branch.
    pub reorgs: Counter,
    /// Blocks disconnected by each reorg.
    pub reorg_depth: Histogram,
    /// This node's miner, hashes per second.
    pub hashrate: Gauge,
    /// Jobs in the live state, by status.
    pub jobs: Family<Labels, Gauge>,
    /// Audits of pending results, by outcome.
    pub audits: Family<Labels, Counter>,
    /// Fraud proofs: sent by this node, and proven or refuted on the main
    /// chain.
    pub fraud_proofs: Family<Labels, Counter>,
    /// Seconds of each segment replay the chain's verifier ran.
    pub replay_seconds: Histogram,
    /// Seconds of each whole audit.
    pub audit_seconds: Histogram,
    /// Bytes of blobs held.
    pub blob_store_bytes: Gauge,
    /// Clients listening to `/api/events`.
    pub event_subscribers: Gauge,
    /// HTTP API answers, by route and status.
    pub http_responses: Family<Labels, Counter>,
}

impl Metrics {
    /// Fresh metrics, registered under `gradchain_` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reorg_depth: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            replay_seconds: Histogram::new(exponential_buckets(0.001, 4.0, 10)),
            audit_seconds: Histogram::new(exponential_buckets(0.01, 4.0, 10)),
            ..Self::unregistered()
        };
        let r = registry.sub_registry_with_prefix("gradchain");
        r.register(
            "chain_height",
            "Height of the main chain's tip",
            metrics.height.clone(),
        );
        r.register(
            "chain_total_work",
            "Cumulative proof of work of the main chain",
            metrics.total_work.clone(),
        );
        r.register("peers", "Connected peers", metrics.peers.clone());
        r.register(
            "mempool_transactions",
            "Transactions waiting in the mempool",
            metrics.mempool_transactions.clone(),
        );
        r.register(
            "mempool_bytes",
            "Encoded bytes of the transactions in the mempool",
            metrics.mempool_bytes.clone(),
        );
        r.register(
            "blocks_mined",
            "Blocks this node mined that the chain took",
            metrics.blocks_mined.clone(),
        );
        r.register(
            "blocks_accepted",
            "Blocks stored, on the main chain or a side branch",
            metrics.blocks_accepted.clone(),
        );
        r.register(
            "blocks_rejected",
            "Blocks refused, by reason",
            metrics.blocks_rejected.clone(),
        );
        r.register(
            "blocks_relayed_early",
            "Gossiped blocks forwarded before their full validation",
            metrics.blocks_relayed_early.clone(),
        );
        r.register(
            "blocks_relayed_early_invalid",
            "Blocks forwarded before their full validation that then failed it",
            metrics.blocks_relayed_early_invalid.clone(),
        );
        r.register(
            "reorgs",
            "Switches of the main chain to another branch",
            metrics.reorgs.clone(),
        );
        r.register(
            "reorg_depth",
            "Blocks disconnected by a reorg",
            metrics.reorg_depth.clone(),
        );
        r.register(
            "hashrate",
            "Hashes per second of this node's miner",
            metrics.hashrate.clone(),
        );
        r.register(
            "jobs",
            "Jobs in the live state, by status",
            metrics.jobs.clone(),
        );
        r.register(
            "audits",
            "Audits of pending results, by outcome",
            metrics.audits.clone(),
        );
        r.register(
            "fraud_proofs",
            "Fraud proofs sent by this node, and proven or refuted on the main chain",
            metrics.fraud_proofs.clone(),
        );
        r.register(
            "replay_seconds",
            "Seconds of each segment replay run to judge a fraud proof",
            metrics.replay_seconds.clone(),
        );
        r.register(
            "audit_seconds",
            "Seconds of each audit of a pending result",
            metrics.audit_seconds.clone(),
        );
        r.register(
            "blob_store_bytes",
            "Bytes of blobs (datasets, weights, training states) held",
            metrics.blob_store_bytes.clone(),
        );
        r.register(
            "http_event_subscribers",
            "Clients listening to /api/events",
            metrics.event_subscribers.clone(),
        );
        r.register(
            "http_responses",
            "HTTP API answers, by route and status",
            metrics.http_responses.clone(),
        );
        // Every known label value starts at zero, so a dashboard or alert
        // sees the series before the first event of its kind.
        for reason in [
            "invalid_header",
            "invalid_block",
            "known_invalid",
            "awaiting_data",
            "store",
            "fork_too_deep",
            "out_of_reach",
        ] {
            let _ = metrics
                .blocks_rejected
                .get_or_create(&label("reason", reason));
        }
        for outcome in ["passed", "fraud_found", "postponed"] {
            let _ = metrics.audits.get_or_create(&label("outcome", outcome));
        }
        for outcome in ["sent", "proven", "refuted"] {
            let _ = metrics
                .fraud_proofs
                .get_or_create(&label("outcome", outcome));
        }
        metrics
    }

    /// Metrics registered nowhere: counted, never exported (tests, and
    /// nodes built without a registry).
    pub fn unregistered() -> Self {
        Self {
            reorg_depth: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            replay_seconds: Histogram::new(exponential_buckets(0.001, 4.0, 10)),
            audit_seconds: Histogram::new(exponential_buckets(0.01, 4.0, 10)),
            height: Gauge::default(),
            total_work: Gauge::default(),
            peers: Gauge::default(),
            mempool_transactions: Gauge::default(),
            mempool_bytes: Gauge::default(),
            blocks_mined: Counter::default(),
            blocks_accepted: Counter::default(),
            blocks_rejected: Family::default(),
            blocks_relayed_early: Counter::default(),
            blocks_relayed_early_invalid: Counter::default(),
            reorgs: Counter::default(),
            hashrate: Gauge::default(),
            jobs: Family::default(),
            audits: Family::default(),
            fraud_proofs: Family::default(),
            blob_store_bytes: Gauge::default(),
            event_subscribers: Gauge::default(),
            http_responses: Family::default(),
        }
    }
}

/// Saturating `u64` to a gauge's `i64`.
pub fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// `work` as a float (rounded): what a gauge or a rate can hold.
pub fn work_f64(work: &protocol::pow::Work) -> f64 {
    work.to_be_bytes()
        .iter()
        .fold(0.0, |acc, byte| acc * 256.0 + f64::from(*byte))
}

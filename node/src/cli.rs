//! The `gradchain-node` command line (DESIGN.md §5): `run`, `keygen`,
//! `healthcheck`, `rpc …` and `bench hash|sync|gossip`.
//!
//! Parsing, config-file merging and output formatting live here; every
//! command calls into the library and no consensus or network logic may live
//! here. Errors end as one line on stderr and a non-zero exit. `--json` prints exactly one JSON object on stdout. The
//! config file for `run --config` is TOML with the same keys as the flags
//! (`data_dir`, `chain`, `listen`, `bootstrap`, `mine`, `miner_address`,
//! `mining_threads`, `mine_interval_ms`, `log_format`, `audit_fraction`,
//! `audit_key`, `http`, `no_http`, `http_token_file`); flags win over it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};
use libp2p::Multiaddr;
use protocol::rpc::{BlockRef, RpcRequest, RpcResponse};
use protocol::state::JobStatus;
use protocol::{
    Address, Amount, BlockHash, ChainParams, Height, JobId, JobRecord, TestMetric, Transaction,
    TxBody, TxKind,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::keys;
use crate::node::{self, NodeConfig};
use crate::rpc_client;

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "/ip4/0.0.0.0/tcp/9700";

#[derive(Parser, Debug)]
#[command(name = "gradchain-node", version, about = "gradchain full node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node.
    Run(RunArgs),
    /// Create a new key file and print its address.
    Keygen {
        /// Where to write the key (refuses to overwrite).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the address of a key file.
    Address {
        /// The key file (64 hex characters).
        #[arg(long)]
        key: PathBuf,
    },
    /// Exit 0 when the node answers a status request.
    Healthcheck {
        /// The node's multiaddr.
        #[arg(long)]
        node: Multiaddr,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Ask a node over the peer RPC.
    Rpc {
        /// The node's multiaddr.
        #[arg(long)]
        node: Multiaddr,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        #[command(subcommand)]
        call: RpcCall,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: BenchKind,
    },
}

#[derive(Subcommand, Debug)]
enum BenchKind {
    /// Midstate miner hashes/s next to a naive double SHA-256 of the header.
    Hash {
        /// Hashing threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// A fresh node syncing regtest blocks full of transfers, next to the
    /// source node's own validation rate.
    Sync {
        /// Blocks to sync.
        #[arg(long, default_value_t = 200)]
        blocks: usize,
        /// Transfers per block.
        #[arg(long, default_value_t = 200)]
        txs_per_block: usize,
    },
    /// Gossip latency (p50, p99) from publication to the last of 4 nodes.
    Gossip {
        /// Transactions timed.
        #[arg(long, default_value_t = 200)]
        tx_samples: usize,
        /// Blocks timed.
        #[arg(long, default_value_t = 20)]
        block_samples: usize,
        /// Transfers per block (6000 puts a block near the 1 MiB cap).
        #[arg(long, default_value_t = 6000)]
        txs_per_block: usize,
    },
}

#[derive(Subcommand, Debug)]
enum RpcCall {
    /// Tip, peers, mempool, miner.
    Status(JsonFlag),
    /// A block by height or hash.
    Block {
        /// A height, or a block hash as 64 hex characters.
        which: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// An account's balance and nonce.
    Balance {
        /// The address, 64 hex characters.
        address: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// One job.
    Job {
        /// The job id, 64 hex characters.
        id: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// All jobs.
    Jobs {
        /// Only open jobs.
        #[arg(long)]
        open: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Sign a transfer with a key file and submit it.
    Transfer {
        /// The sender's key file.
        #[arg(long)]
        key: PathBuf,
        /// The recipient address.
        #[arg(long)]
        to: String,
        /// Base units to send.
        #[arg(long)]
        amount: u64,
        /// Fee in base units.
        #[arg(long, default_value_t = 1)]
        fee: u64,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Args, Debug, Clone, Copy)]
struct JsonFlag {
    /// Print exactly one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug, Default)]
struct RunArgs {
    /// TOML config file with the same keys as these flags.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the store and the node key live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// devnet or regtest.
    #[arg(long)]
    chain: Option<String>,
    /// Listen address (repeatable).
    #[arg(long)]
    listen: Vec<Multiaddr>,
    /// Peer to keep connected to (repeatable), with or without /p2p/.
    #[arg(long)]
    bootstrap: Vec<Multiaddr>,
    /// Mine blocks.
    #[arg(long)]
    mine: bool,
    /// Address the coinbase pays (default: a key kept in the data dir).
    #[arg(long)]
    miner_address: Option<String>,
    /// Hashing threads.
    #[arg(long)]
    mining_threads: Option<usize>,
    /// Least milliseconds between two blocks this node mines (regtest
    /// defaults to 1000 because nearly every hash wins there).
    #[arg(long)]
    mine_interval_ms: Option<u64>,
    /// text or json.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Share of each pending result's segments to replay, 0 (no audits) to
    /// 1 (everything); default 0.1.
    #[arg(long)]
    audit_fraction: Option<f64>,
    /// Key file that signs and bonds fraud proofs (default: the miner key
    /// kept in the data dir).
    #[arg(long)]
    audit_key: Option<PathBuf>,
    /// Address of the HTTP API (REST, events, /metrics, dashboard)
    /// [default: 127.0.0.1:9701].
    #[arg(long, value_name = "ADDR", conflicts_with = "no_http")]
    http: Option<std::net::SocketAddr>,
    /// Serve no HTTP API.
    #[arg(long)]
    no_http: bool,
    /// File holding the bearer token the HTTP write routes require; needed
    /// to bind any address but loopback.
    #[arg(long, value_name = "FILE")]
    http_token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    chain: Option<String>,
    #[serde(default)]
    listen: Vec<String>,
    #[serde(default)]
    bootstrap: Vec<String>,
    mine: Option<bool>,
    miner_address: Option<String>,
    mining_threads: Option<usize>,
    mine_interval_ms: Option<u64>,
    log_format: Option<LogFormat>,
    audit_fraction: Option<f64>,
    audit_key: Option<PathBuf>,
    http: Option<String>,
    no_http: Option<bool>,
    http_token_file: Option<PathBuf>,
}

/// Runs the command line; the binary's whole `main`.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            use clap::error::ErrorKind;
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) {
                let _ = err.print();
                return ExitCode::SUCCESS;
            }
            let text = err.render().to_string();
            let line = text.lines().next().unwrap_or("error: invalid arguments");
            eprintln!("{line}");
            return ExitCode::from(2);
        }
    };
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let message = format!("{err:#}").replace('\n', " ");
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run_node(args),
        Command::Keygen { out } => {
            let address = keys::keygen(&out)?;
            println!("{address}");
            Ok(())
        }
        Command::Address { key } => {
            let key = keys::load_signing_key(&key)?;
            println!(
                "{}",
                protocol::Address::from_verifying_key(&key.verifying_key())
            );
            Ok(())
        }
        Command::Healthcheck { node, timeout } => {
            let response = runtime()?.block_on(rpc_client::call(
                &node,
                &RpcRequest::Status,
                Duration::from_secs(timeout),
            ))?;
            match response {
                RpcResponse::Status(status) => {
                    println!("ok height {} tip {}", status.height, status.tip);
                    Ok(())
                }
                other => bail!("unexpected answer to status: {}", describe(&other)),
            }
        }
        Command::Rpc {
            node,
            timeout,
            call,
        } => runtime()?.block_on(rpc(node, Duration::from_secs(timeout), call)),
        Command::Bench {
            which: BenchKind::Hash { threads, seconds },
        } => {
            if !(seconds.is_finite() && seconds > 0.0 && seconds <= 3600.0) {
                bail!("--seconds {seconds} is out of range, expected 0 < S <= 3600");
            }
            let result = crate::bench::bench_hash(threads, Duration::from_secs_f64(seconds));
            println!("threads  {}", result.threads);
            println!(
                "sha2 naive     {:>8.2} MH/s  ({:.2} MH/s per thread)",
                result.naive / 1e6,
                result.naive / 1e6 / result.threads as f64
            );
            println!(
                "sha2 midstate  {:>8.2} MH/s  ({:.2} MH/s per thread)",
                result.midstate / 1e6,
                result.midstate / 1e6 / result.threads as f64
            );
            println!(
                "miner {:<9}{:>8.2} MH/s  ({:.2} MH/s per thread)",
                result.kernel.name(),
                result.miner / 1e6,
                result.miner / 1e6 / result.threads as f64
            );
            println!("ratio midstate/naive  {:.2}x", result.ratio());
            println!("ratio miner/naive     {:.2}x", result.miner_ratio());
            Ok(())
        }
        Command::Bench {
            which:
                BenchKind::Sync {
                    blocks,
                    txs_per_block,
                },
        } => {
            if blocks == 0 {
                bail!("--blocks 0: expected at least one block");
            }
            let r = runtime()?.block_on(crate::bench::bench_sync(blocks, txs_per_block))?;
            let txs = r.blocks.saturating_mul(r.txs_per_block) as f64;
            let blocks = r.blocks as f64;
            println!(
                "blocks {}  transfers per block {}",
                r.blocks, r.txs_per_block
            );
            println!(
                "validate+store (source node)  {:>9.1} blocks/s  {:>10.1} tx/s  ({:.2}s)",
                blocks / r.validate_seconds,
                txs / r.validate_seconds,
                r.validate_seconds
            );
            println!(
                "sync over libp2p (fresh node) {:>9.1} blocks/s  {:>10.1} tx/s  ({:.2}s)",
                blocks / r.sync_seconds,
                txs / r.sync_seconds,
                r.sync_seconds
            );
            println!(
                "ratio sync/validation  {:.2}",
                r.validate_seconds / r.sync_seconds
            );
            Ok(())
        }
        Command::Bench {
            which:
                BenchKind::Gossip {
                    tx_samples,
                    block_samples,
                    txs_per_block,
                },
        } => {
            let r = runtime()?.block_on(crate::bench::bench_gossip(
                tx_samples,
                block_samples,
                txs_per_block,
            ))?;
            use crate::bench::percentile;
            println!("4 nodes in a line A-B-C-D, latency from publication on A to arrival on all of B, C, D");
            println!(
                "transaction ({} samples)            p50 {:>8.2} ms  p99 {:>8.2} ms",
                r.tx.len(),
                percentile(&r.tx, 0.5) * 1e3,
                percentile(&r.tx, 0.99) * 1e3
            );
            println!(
                "block of {} bytes ({} samples)  p50 {:>8.2} ms  p99 {:>8.2} ms",
                r.block_bytes,
                r.block.len(),
                percentile(&r.block, 0.5) * 1e3,
                percentile(&r.block, 0.99) * 1e3
            );
            Ok(())
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,libp2p_gossipsub=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn parse_address(text: &str) -> anyhow::Result<Address> {
    text.trim().parse::<Address>().map_err(|e| anyhow!("{e}"))
}

fn load_file_config(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow!("config file {}: {}", path.display(), e.message()))
}

fn parse_addrs(items: &[String]) -> anyhow::Result<Vec<Multiaddr>> {
    items
        .iter()
        .map(|s| {
            s.parse::<Multiaddr>()
                .map_err(|e| anyhow!("invalid multiaddr {s:?}: {e}"))
        })
        .collect()
}

fn node_config(args: RunArgs) -> anyhow::Result<(NodeConfig, LogFormat)> {
    let file = match &args.config {
        Some(path) => load_file_config(path)?,
        None => FileConfig::default(),
    };
    let chain = args.chain.or(file.chain).unwrap_or_else(|| "devnet".into());
    let params = ChainParams::by_name(&chain)
        .ok_or_else(|| anyhow!("unknown chain {chain:?}, expected devnet or regtest"))?;
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("gradchain-data"));
    let mut config = NodeConfig::new(data_dir, params);
    config.listen = if args.listen.is_empty() {
        let from_file = parse_addrs(&file.listen)?;
        if from_file.is_empty() {
            vec![DEFAULT_LISTEN.parse()?]
        } else {
            from_file
        }
    } else {
        args.listen
    };
    config.bootstrap = if args.bootstrap.is_empty() {
        parse_addrs(&file.bootstrap)?
    } else {
        args.bootstrap
    };
    let mine = args.mine || file.mine.unwrap_or(false);
    let miner_address = args.miner_address.or(file.miner_address);
    if mine {
        config.mine = Some(match miner_address {
            Some(text) => parse_address(&text)?,
            None => keys::default_miner_address(&config.data_dir)?,
        });
    } else if let Some(text) = miner_address {
        // Still checked, so a typo is caught before it matters.
        parse_address(&text)?;
    }
    if let Some(threads) = args.mining_threads.or(file.mining_threads) {
        if threads == 0 || threads > 1024 {
            bail!("--mining-threads {threads} is out of range, expected 1..=1024");
        }
        config.mining_threads = threads;
    }
    if let Some(ms) = args.mine_interval_ms.or(file.mine_interval_ms) {
        config.mine_interval = Duration::from_millis(ms);
    }
    if let Some(fraction) = args.audit_fraction.or(file.audit_fraction) {
        if !(0.0..=1.0).contains(&fraction) {
            bail!("--audit-fraction {fraction} is out of range, expected 0 (off) to 1 (every segment)");
        }
        config.audit.fraction = fraction;
    }
    let audit_key = match args.audit_key.or(file.audit_key) {
        Some(path) => keys::load_signing_key(&path)
            .map_err(|e| anyhow!("--audit-key {}: {e}", path.display()))?,
        None => keys::default_miner_key(&config.data_dir)?,
    };
    config.audit.key = Some(std::sync::Arc::new(audit_key));
    if args.no_http || file.no_http.unwrap_or(false) {
        config.http = None;
    } else if let Some(addr) = args.http {
        config.http = Some(addr);
    } else if let Some(text) = &file.http {
        config.http = Some(text.parse().map_err(|_| {
            anyhow!("config file: http {text:?} is not an address such as 127.0.0.1:9701")
        })?);
    }
    if let Some(path) = args.http_token_file.or(file.http_token_file) {
        let token = std::fs::read_to_string(&path)
            .with_context(|| format!("--http-token-file {}", path.display()))?;
        let token = token.trim();
        if token.is_empty() {
            bail!("--http-token-file {} is empty, expected a token of at least 16 characters", path.display());
        }
        config.http_token = Some(token.to_owned());
    }
    let log_format = args
        .log_format
        .or(file.log_format)
        .unwrap_or(LogFormat::Text);
    Ok((config, log_format))
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn run_node(args: RunArgs) -> anyhow::Result<()> {
    let (config, log_format) = node_config(args)?;
    init_logging(log_format);
    runtime()?.block_on(node::run(config, shutdown_signal()))?;
    Ok(())
}

fn describe(response: &RpcResponse) -> String {
    match response {
        RpcResponse::Error(err) => format!("{:?}: {}", err.code, err.message),
        RpcResponse::Status(_) => "a status".into(),
        RpcResponse::Block(_) => "a block".into(),
        RpcResponse::Balance(_) => "a balance".into(),
        RpcResponse::TxAccepted(_) => "a transaction id".into(),
        RpcResponse::Job(..) => "a job".into(),
        RpcResponse::Jobs(_) => "a job list".into(),
        RpcResponse::BlobStored(_) => "a blob digest".into(),
        RpcResponse::BlobChunkAccepted { .. } => "an upload's progress".into(),
        RpcResponse::BlobChunk(_) => "a blob chunk".into(),
        RpcResponse::Predictions(_) => "predictions".into(),
    }
}

fn work_json(work: &protocol::Work) -> Value {
    if work.0.bits() <= 64 {
        json!(work.0.low_u64())
    } else {
        json!(work.to_string())
    }
}

fn job_json(id: &JobId, job: &JobRecord) -> Value {
    let mut pending_at = None;
    let mut settles_at = None;
    let mut bond = None;
    let (status, worker, weights, metric, fulfilled_at) = match &job.status {
        JobStatus::Open => ("open", None, None, None, None),
        JobStatus::Pending {
            worker,
            result,
            height,
            settles_at: settles,
            bond: escrowed,
            ..
        } => {
            pending_at = Some(height.0);
            settles_at = Some(settles.0);
            bond = Some(escrowed.0);
            (
                "pending",
                Some(worker.to_string()),
                Some(result.weights.to_string()),
                Some(result.metric),
                None,
            )
        }
        JobStatus::Fulfilled {
            worker,
            result,
            height,
            submitted_at,
            bond: returned,
            ..
        } => {
            pending_at = Some(submitted_at.0);
            settles_at = Some(height.0);
            bond = Some(returned.0);
            (
                "fulfilled",
                Some(worker.to_string()),
                Some(result.weights.to_string()),
                Some(result.metric),
                Some(height.0),
            )
        }
        JobStatus::Expired { .. } => ("expired", None, None, None, None),
    };
    let challenges: Vec<Value> = job
        .challenges
        .iter()
        .map(|c| {
            json!({
                "challenger": c.challenger.to_string(),
                "worker": c.worker.to_string(),
                "segment": c.segment,
                "tx": c.tx.to_string(),
                "height": c.height.0,
                "outcome": match c.outcome {
                    protocol::ChallengeOutcome::Proven => "proven",
                    protocol::ChallengeOutcome::Refuted => "refuted",
                },
            })
        })
        .collect();
    let mut value = json!({
        "id": id.to_string(),
        "status": status,
        "dataset": job.spec.dataset.digest.to_string(),
        "bounty": job.bounty.0,
        "poster": job.poster.to_string(),
        "worker": worker,
        "weights_digest": weights,
        "fulfilled_at": fulfilled_at,
        "posted_at": job.posted_at.0,
        "expires_at": job.expires_at.0,
        "segments": job.spec.segments,
        "bond": bond.unwrap_or(job.spec.bond.0),
        "challenge_window": job.spec.challenge_window,
        "pending_at": pending_at,
        "settles_at": settles_at,
        "challenges": challenges,
    });
    if let Some(object) = value.as_object_mut() {
        match metric {
            Some(TestMetric::Accuracy { correct, total }) => {
                let accuracy = if total == 0 {
                    0.0
                } else {
                    f64::from(correct) / f64::from(total)
                };
                object.insert("test_accuracy".into(), json!(accuracy));
            }
            Some(TestMetric::Mse(mse)) => {
                object.insert("test_mse".into(), json!(f64::from(mse.to_f32())));
            }
            None => {}
        }
    }
    value
}

fn tx_json(tx: &Transaction) -> Value {
    match tx {
        Transaction::Coinbase(cb) => json!({
            "id": tx.id().map(|i| i.to_string()).unwrap_or_default(),
            "kind": "coinbase",
            "to": cb.miner.to_string(),
            "amount": cb.amount.0,
        }),
        Transaction::Signed(signed) => {
            let (kind, extra) = match &signed.body.kind {
                TxKind::Transfer { to, amount } => (
                    "transfer",
                    json!({"to": to.to_string(), "amount": amount.0}),
                ),
                TxKind::PostJob {
                    bounty, expires_at, ..
                } => (
                    "post_job",
                    json!({"bounty": bounty.0, "expires_at": expires_at.0}),
                ),
                TxKind::SubmitResult {
                    job,
                    result,
                    leaves,
                } => (
                    "submit_result",
                    json!({
                        "job": job.to_string(),
                        "segments_root": result.segments_root.to_string(),
                        "loss_curve": leaves.iter().skip(1).map(|l| f64::from(l.loss.to_f32())).collect::<Vec<_>>(),
                    }),
                ),
                TxKind::FraudProof { job, claim } => (
                    "fraud_proof",
                    json!({
                        "job": job.to_string(),
                        "claim": match claim {
                            protocol::FraudClaim::InitialState { .. } => "initial_state".to_string(),
                            protocol::FraudClaim::Segment { index, .. } => format!("segment {index}"),
                            protocol::FraudClaim::Final { .. } => "final".to_string(),
                        },
                    }),
                ),
            };
            let mut value = json!({
                "id": tx.id().map(|i| i.to_string()).unwrap_or_default(),
                "kind": kind,
                "from": signed.body.from.to_string(),
                "nonce": signed.body.nonce,
                "fee": signed.body.fee.0,
            });
            if let (Some(object), Some(extra)) = (value.as_object_mut(), extra.as_object()) {
                object.extend(extra.clone());
            }
            value
        }
    }
}

fn parse_block_ref(text: &str) -> anyhow::Result<BlockRef> {
    if !text.is_empty() && text.len() < 20 && text.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(BlockRef::Height(Height(text.parse()?)));
    }
    text.parse::<BlockHash>().map(BlockRef::Hash).map_err(|_| {
        anyhow!("invalid block {text:?}: expected a height or a block hash of 64 hex characters")
    })
}

async fn ask(
    node: &Multiaddr,
    timeout: Duration,
    request: RpcRequest,
) -> anyhow::Result<RpcResponse> {
    match rpc_client::call(node, &request, timeout).await? {
        RpcResponse::Error(err) => bail!("node refused: {:?}: {}", err.code, err.message),
        other => Ok(other),
    }
}

fn print(json_out: bool, value: Value, text: String) {
    if json_out {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

async fn rpc(node: Multiaddr, timeout: Duration, call: RpcCall) -> anyhow::Result<()> {
    match call {
        RpcCall::Status(flag) => match ask(&node, timeout, RpcRequest::Status).await? {
            RpcResponse::Status(s) => {
                let value = json!({
                    "chain": s.chain,
                    "height": s.height.0,
                    "tip": s.tip.to_string(),
                    "total_work": work_json(&s.total_work),
                    "peers": s.peers,
                    "mempool": s.mempool,
                    "mining": s.mining,
                    "hashrate": s.hashrate,
                    "state_root": s.state_root.to_string(),
                    "peer_id": s.peer_id,
                });
                let text = format!(
                    "chain {}\nheight {}\ntip {}\ntotal_work {}\nstate_root {}\npeers {}\nmempool {}\nmining {}\nhashrate {}\npeer_id {}",
                    s.chain, s.height, s.tip, s.total_work, s.state_root, s.peers, s.mempool, s.mining, s.hashrate, s.peer_id
                );
                print(flag.json, value, text);
                Ok(())
            }
            other => bail!("unexpected answer: {}", describe(&other)),
        },
        RpcCall::Block { which, json } => {
            let which = parse_block_ref(&which)?;
            match ask(&node, timeout, RpcRequest::Block(which)).await? {
                RpcResponse::Block(info) => {
                    let h = &info.block.header;
                    let value = json!({
                        "height": info.height.0,
                        "hash": info.hash.to_string(),
                        "main_chain": info.main_chain,
                        "prev": h.prev.to_string(),
                        "merkle_root": h.merkle_root.to_string(),
                        "state_root": h.state_root.to_string(),
                        "time": h.time,
                        "bits": h.bits.0,
                        "nonce": h.nonce,
                        "txs": info.block.txs.iter().map(tx_json).collect::<Vec<_>>(),
                    });
                    let text = format!(
                        "height {}\nhash {}\nprev {}\ntime {}\ntxs {}\nmain_chain {}",
                        info.height,
                        info.hash,
                        h.prev,
                        h.time,
                        info.block.txs.len(),
                        info.main_chain
                    );
                    print(json.json, value, text);
                    Ok(())
                }
                other => bail!("unexpected answer: {}", describe(&other)),
            }
        }
        RpcCall::Balance { address, json } => {
            let address = parse_address(&address)?;
            match ask(&node, timeout, RpcRequest::Balance(address)).await? {
                RpcResponse::Balance(b) => {
                    let value = json!({
                        "address": b.address.to_string(),
                        "balance": b.account.balance.0,
                        "nonce": b.account.nonce,
                        "next_nonce": b.next_nonce,
                    });
                    let text = format!(
                        "address {}\nbalance {}\nnonce {}",
                        b.address, b.account.balance, b.account.nonce
                    );
                    print(json.json, value, text);
                    Ok(())
                }
                other => bail!("unexpected answer: {}", describe(&other)),
            }
        }
        RpcCall::Job { id, json } => {
            let id = id.trim().parse::<JobId>().map_err(|e| anyhow!("{e}"))?;
            match ask(&node, timeout, RpcRequest::Job(id)).await? {
                RpcResponse::Job(id, job) => {
                    let value = job_json(&id, &job);
                    let text = serde_json::to_string_pretty(&value)?;
                    print(json.json, value, text);
                    Ok(())
                }
                other => bail!("unexpected answer: {}", describe(&other)),
            }
        }
        RpcCall::Jobs { open, json } => {
            match ask(&node, timeout, RpcRequest::Jobs { open_only: open }).await? {
                RpcResponse::Jobs(jobs) => {
                    let list: Vec<Value> = jobs.iter().map(|(id, job)| job_json(id, job)).collect();
                    let text = jobs
                        .iter()
                        .map(|(id, job)| {
                            format!("{id} bounty {} expires_at {}", job.bounty, job.expires_at)
                        })
                        .collect::<Vec<_>>()
                        .join("\n");
                    print(json.json, json!({ "jobs": list }), text);
                    Ok(())
                }
                other => bail!("unexpected answer: {}", describe(&other)),
            }
        }
        RpcCall::Transfer {
            key,
            to,
            amount,
            fee,
            json,
        } => {
            let to = parse_address(&to)?;
            let key = keys::load_signing_key(&key)?;
            let from = Address::from_verifying_key(&key.verifying_key());
            let status = match ask(&node, timeout, RpcRequest::Status).await? {
                RpcResponse::Status(s) => s,
                other => bail!("unexpected answer: {}", describe(&other)),
            };
            let nonce = match ask(&node, timeout, RpcRequest::Balance(from)).await? {
                RpcResponse::Balance(b) => b.next_nonce,
                other => bail!("unexpected answer: {}", describe(&other)),
            };
            let tx = TxBody {
                from,
                nonce,
                fee: Amount(fee),
                kind: TxKind::Transfer {
                    to,
                    amount: Amount(amount),
                },
            }
            .sign(&key, status.chain_id)?;
            match ask(&node, timeout, RpcRequest::SubmitTx(tx)).await? {
                RpcResponse::TxAccepted(id) => {
                    print(
                        json.json,
                        json!({ "txid": id.to_string(), "nonce": nonce }),
                        id.to_string(),
                    );
                    Ok(())
                }
                other => bail!("unexpected answer: {}", describe(&other)),
            }
        }
    }
}

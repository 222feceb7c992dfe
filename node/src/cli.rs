//! The `gradchain-node` command line (docs/DESIGN.md §5): `run`, `keygen`,
//! `healthcheck`, `rpc …` and `bench hash|sync|gossip|http`.
//!
//! Parsing, config-file merging and output formatting live here; every
//! command calls into the library and no consensus or network logic may live
//! here. Errors end as one line on stderr and a non-zero exit. `--json` prints exactly one JSON object on stdout. The
//! config file for `run --config` is TOML with the same keys as the flags
//! (`data_dir`, `chain`, `listen`, `bootstrap`, `mine`, `miner_address`,
//! `mining_threads`, `mine_interval_ms`, `log_format`, `audit_fraction`,
//! `audit_key`, `replay_threads`, `http`, `no_http`, `http_token_file`);
//! flags win over it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Parser, Subcommand};
use libp2p::Multiaddr;
use protocol::{Address, Amount, ChainParams, JobId, TxBody, TxKind};
use serde::Deserialize;
use serde_json::{json, Value};
use trainer::client::{JobFilter, NodeArgs, NodeClient};
use trainer::logging::LogFormat;

use crate::keys;
use crate::node::{self, NodeConfig};

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
    /// Exit 0 when the node's HTTP API answers a status request.
    Healthcheck {
        #[command(flatten)]
        node: NodeArgs,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Ask a node over its HTTP API.
    Rpc {
        #[command(flatten)]
        node: NodeArgs,
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
    /// A network of regtest nodes in one process: block propagation, stale
    /// blocks, mempool convergence, and a partition's heal.
    Network {
        /// Nodes.
        #[arg(long, default_value_t = 32)]
        nodes: usize,
        /// Least peers per node.
        #[arg(long, default_value_t = 6)]
        min_peers: usize,
        /// Most peers per node.
        #[arg(long, default_value_t = 8)]
        max_peers: usize,
        /// Nodes that find blocks.
        #[arg(long, default_value_t = 8)]
        miners: usize,
        /// Mean seconds between blocks.
        #[arg(long, default_value_t = 2.0)]
        block_interval: f64,
        /// Transfers per second.
        #[arg(long, default_value_t = 20.0)]
        tx_rate: f64,
        /// Seconds of steady flow.
        #[arg(long, default_value_t = 60.0)]
        steady: f64,
        /// Seconds the two halves stay apart.
        #[arg(long, default_value_t = 20.0)]
        partition: f64,
        /// Seed of the topology and the block finders.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Connecting a block of transfers on a small and a large state: the
    /// state tree makes the cost independent of the state's size.
    Connect {
        /// State sizes (accounts), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1000,1000000")]
        accounts: Vec<usize>,
        /// Transfers in the block.
        #[arg(long, default_value_t = 200)]
        txs: usize,
        /// Applications timed per size (the median is printed).
        #[arg(long, default_value_t = 20)]
        rounds: usize,
    },
    /// HTTP API latency (p50, p99) under concurrent clients, next to the
    /// same questions put to the chain task directly.
    Http {
        /// Requests in flight at once.
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
        /// Rounds of `concurrency` requests per route.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
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
        /// Fee in base units [default: the chain's minimum for the
        /// transaction's size]. A recipient without an account also costs
        /// the chain's entry charge, burned.
        #[arg(long)]
        fee: Option<u64>,
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
    /// Threads of the training engine for audits and fraud-proof replays
    /// [default: the cores available]. Replays give the same bits with any
    /// count.
    #[arg(long)]
    replay_threads: Option<usize>,
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
    replay_threads: Option<usize>,
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
            let status = node
                .client()?
                .with_timeout(Duration::from_secs(timeout))
                .status()?;
            println!("ok height {} tip {}", status.height, status.tip);
            Ok(())
        }
        Command::Rpc {
            node,
            timeout,
            call,
        } => rpc(
            &node.client()?.with_timeout(Duration::from_secs(timeout)),
            call,
        ),
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
            if let (Some(one), Some(scaling)) = (result.miner_one_thread, result.scaling()) {
                println!(
                    "miner on 1 thread {:.2} MH/s; on {} threads {:.2} MH/s = {:.2}x of {} x 1 thread",
                    one / 1e6,
                    result.threads,
                    result.miner / 1e6,
                    scaling,
                    result.threads
                );
            }
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
                "blocks {}  transfers per block {}  signature threads {}",
                r.blocks, r.txs_per_block, r.threads
            );
            let row = |what: &str, seconds: f64| {
                println!(
                    "{what:<44} {:>8.1} blocks/s {:>10.1} tx/s  ({seconds:.2}s)",
                    blocks / seconds,
                    txs / seconds,
                );
            };
            row(
                "validate+store, baseline (1 thread, no cache)",
                r.baseline_seconds,
            );
            row("validate+store, unseen signatures", r.validate_seconds);
            row("validate+store, txs seen in the mempool", r.seen_seconds);
            row(
                "sync over libp2p, baseline (1 thread)",
                r.baseline_sync_seconds,
            );
            row("sync over libp2p", r.sync_seconds);
            println!(
                "ratio unseen/baseline {:.2}  seen/baseline {:.2}  sync/baseline sync {:.2}  sync/validation {:.2}",
                r.baseline_seconds / r.validate_seconds,
                r.baseline_seconds / r.seen_seconds,
                r.baseline_sync_seconds / r.sync_seconds,
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
            println!(
                "4 nodes in a line A-B-C-D, latency from publication on A to arrival on all of B, C, D"
            );
            let row = |what: &str, samples: &[f64]| {
                println!(
                    "{what:<52} ({:>3} samples)  p50 {:>8.2} ms  p99 {:>8.2} ms",
                    samples.len(),
                    percentile(samples, 0.5) * 1e3,
                    percentile(samples, 0.99) * 1e3
                );
            };
            row("transaction", &r.tx);
            let kb = r.block_bytes as f64 / 1e3;
            row(
                &format!("block {kb:.0} kB, txs unseen, validated before relay"),
                &r.unseen_validated,
            );
            row(
                &format!("block {kb:.0} kB, txs unseen, early relay on"),
                &r.unseen_early,
            );
            row(
                &format!("block {kb:.0} kB, txs seen, validated before relay"),
                &r.seen_validated,
            );
            row(
                &format!("block {kb:.0} kB, txs seen, relayed early"),
                &r.seen_early,
            );
            row(
                "  the same, until B, C and D had relayed it",
                &r.seen_early_reached,
            );
            let ratio =
                |a: &[f64], b: &[f64], p: f64| percentile(a, p) / percentile(b, p).max(1e-9);
            println!(
                "ratio seen early/validated, connected on all: p50 {:.2}  p99 {:.2}; relayed by all: p50 {:.2}  p99 {:.2}",
                ratio(&r.seen_early, &r.seen_validated, 0.5),
                ratio(&r.seen_early, &r.seen_validated, 0.99),
                ratio(&r.seen_early_reached, &r.seen_validated, 0.5),
                ratio(&r.seen_early_reached, &r.seen_validated, 0.99)
            );
            println!("(block rows time until B, C and D have the block as their tip, unless said otherwise)");
            Ok(())
        }
        Command::Bench {
            which:
                BenchKind::Network {
                    nodes,
                    min_peers,
                    max_peers,
                    miners,
                    block_interval,
                    tx_rate,
                    steady,
                    partition,
                    seed,
                },
        } => {
            let seconds = |name: &str, value: f64| {
                Duration::try_from_secs_f64(value).map_err(|_| {
                    anyhow::anyhow!("--{name} {value}: expected a number of seconds ≥ 0")
                })
            };
            if !(tx_rate > 0.0 && tx_rate.is_finite()) {
                bail!("--tx-rate {tx_rate}: expected a positive number of transfers per second");
            }
            if block_interval <= 0.0 {
                bail!("--block-interval {block_interval}: expected a positive number of seconds");
            }
            if nodes < 2 || miners == 0 || min_peers > max_peers {
                bail!("--nodes {nodes} --miners {miners} --min-peers {min_peers} --max-peers {max_peers}: expected at least 2 nodes, 1 miner, and min-peers ≤ max-peers");
            }
            let config = crate::simnet::SimConfig {
                nodes,
                min_peers,
                max_peers,
                miners,
                block_interval: seconds("block-interval", block_interval)?,
                tx_rate,
                steady: seconds("steady", steady)?,
                partition: seconds("partition", partition)?,
                seed,
            };
            let dir = crate::bench::tempfile_dir()?;
            let report = runtime()?.block_on(crate::simnet::simulate(&config, &dir));
            let _ = std::fs::remove_dir_all(&dir);
            let report = report?;
            println!(
                "{miners} miners, a block every {block_interval} s on average, {tx_rate} transfers/s, {steady} s steady, {partition} s apart"
            );
            println!("{report}");
            Ok(())
        }
        Command::Bench {
            which:
                BenchKind::Connect {
                    accounts,
                    txs,
                    rounds,
                },
        } => {
            if accounts.is_empty() || txs == 0 {
                bail!("--accounts and --txs must name at least one account and one transfer");
            }
            let rows = crate::bench::bench_connect(&accounts, txs, rounds)?;
            println!("block of {txs} transfers, median of {rounds} applications");
            for row in &rows {
                println!(
                    "accounts {:>9}  connect {:>8.3} ms  state root {:>7.3} ms  root from scratch {:>9.1} ms",
                    row.accounts,
                    row.connect_seconds * 1e3,
                    row.root_seconds * 1e3,
                    row.from_scratch_seconds * 1e3
                );
            }
            if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
                println!(
                    "ratio {} / {} accounts: connect {:.2}  state root {:.2}  from scratch {:.0}",
                    last.accounts,
                    first.accounts,
                    last.connect_seconds / first.connect_seconds,
                    last.root_seconds / first.root_seconds,
                    last.from_scratch_seconds / first.from_scratch_seconds
                );
            }
            Ok(())
        }
        Command::Bench {
            which:
                BenchKind::Http {
                    concurrency,
                    rounds,
                },
        } => {
            if concurrency == 0 || concurrency > 4096 || rounds == 0 {
                bail!("--concurrency {concurrency} --rounds {rounds}: expected 1..=4096 clients and at least one round");
            }
            let r = runtime()?.block_on(crate::bench::bench_http(concurrency, rounds))?;
            use crate::bench::percentile;
            println!(
                "{} requests in flight at once, {} rounds; HTTP: a new connection per request",
                r.concurrency, rounds
            );
            let row = |name: &str, http: &[f64], direct: &[f64]| {
                let (h50, h99) = (percentile(http, 0.5), percentile(http, 0.99));
                let (d50, d99) = (percentile(direct, 0.5), percentile(direct, 0.99));
                println!(
                    "{name:<12} HTTP p50 {:>8.0} us p99 {:>8.0} us | chain task p50 {:>8.1} us p99 {:>8.1} us | ratio p50 {:.0}x p99 {:.0}x",
                    h50 * 1e6, h99 * 1e6, d50 * 1e6, d99 * 1e6,
                    h50 / d50.max(1e-9), h99 / d99.max(1e-9)
                );
            };
            row("/api/status", &r.status_http, &r.status_direct);
            row("/api/blocks", &r.blocks_http, &r.blocks_direct);
            Ok(())
        }
    }
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
    // The engine's pool is process-wide; replays and audits run on it.
    let replay_threads = args
        .replay_threads
        .or(file.replay_threads)
        .unwrap_or_else(trainer::pool::available_threads);
    if replay_threads == 0 || replay_threads > 1024 {
        bail!("--replay-threads {replay_threads} is out of range, expected 1..=1024");
    }
    trainer::pool::set_threads(replay_threads);
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
            bail!(
                "--http-token-file {} is empty, expected a token of at least 16 characters",
                path.display()
            );
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
    trainer::logging::init(log_format, "info,libp2p_gossipsub=error");
    runtime()?.block_on(node::run(config, shutdown_signal()))?;
    Ok(())
}

fn print(json_out: bool, value: Value, text: String) {
    if json_out {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

fn json_of<T: serde::Serialize>(value: &T) -> anyhow::Result<Value> {
    serde_json::to_value(value).context("cannot turn the node's answer into JSON")
}

fn rpc(client: &NodeClient, call: RpcCall) -> anyhow::Result<()> {
    match call {
        RpcCall::Status(flag) => {
            let s = client.status()?;
            let text = format!(
                "chain {}\nheight {}\ntip {}\ntotal_work {}\nstate_root {}\npeers {}\nmempool {}\nmining {}\nhashrate {}\npeer_id {}\nsynced {}",
                s.chain, s.height, s.tip, s.total_work, s.state_root, s.peers, s.mempool, s.mining, s.hashrate, s.peer_id, s.synced
            );
            print(flag.json, json_of(&s)?, text);
            Ok(())
        }
        RpcCall::Block { which, json } => {
            let b = client.block(&which)?;
            let text = format!(
                "height {}\nhash {}\nprev {}\ntime {}\ntxs {}\nmain_chain {}",
                b.height,
                b.hash,
                b.prev,
                b.time,
                b.txs.len(),
                b.main_chain
            );
            print(json.json, json_of(&b)?, text);
            Ok(())
        }
        RpcCall::Balance { address, json } => {
            let address = parse_address(&address)?;
            let b = client.address(&address)?;
            let text = format!(
                "address {}\nbalance {}\nnonce {}",
                b.address, b.balance, b.nonce
            );
            print(json.json, json_of(&b)?, text);
            Ok(())
        }
        RpcCall::Job { id, json } => {
            let id = id.trim().parse::<JobId>().map_err(|e| anyhow!("{e}"))?;
            let value = json_of(&client.job(&id)?)?;
            let text = serde_json::to_string_pretty(&value)?;
            print(json.json, value, text);
            Ok(())
        }
        RpcCall::Jobs { open, json } => {
            let filter = open.then_some(JobFilter::Open);
            let jobs = client.all_jobs(filter)?;
            let text = jobs
                .iter()
                .map(|job| {
                    format!(
                        "{} {} bounty {} expires_at {}",
                        job.id, job.status, job.bounty, job.expires_at
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            print(json.json, json!({ "jobs": jobs }), text);
            Ok(())
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
            let status = client.status()?;
            let nonce = client.address(&from)?.next_nonce;
            let body = TxBody {
                from,
                nonce,
                fee: Amount::ZERO,
                kind: TxKind::Transfer {
                    to,
                    amount: Amount(amount),
                },
            };
            let tx = trainer::client::with_fee(body, fee, Amount(status.min_fee_rate))?
                .sign(&key, status.chain_id)?;
            let id = client.submit_tx(&tx)?;
            print(
                json.json,
                json!({ "txid": id.to_string(), "nonce": nonce }),
                id.to_string(),
            );
            Ok(())
        }
    }
}

//! `gradchain-trainer`: trains a job locally (`train`), times the
//! reproducible engine against stock candle (`bench`) and optimistic
//! verification against training (`bench verify`).
//!
//! This binary parses arguments, shows progress and prints results; the
//! work is in the library. It must never panic on bad input: a bad flag or
//! file is one error line on stderr and a non-zero exit.

mod netcli;
mod train_flags;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use protocol::TestMetric;
use train_flags::{parse_hidden, Hidden, TrainFlags};
use trainer::bench::{self, BenchJob};
use trainer::bench_verify;
use trainer::logging::LogFormat;
use trainer::{Dataset, DatasetError, DatasetLimits, TaskKind};

#[derive(Parser, Debug)]
#[command(
    name = "gradchain-trainer",
    version,
    about = "Reproducible training for gradchain jobs"
)]
struct Cli {
    /// Log lines on stderr as text (coloured on a terminal) or as JSON.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Threads of the training engine (`train`, `work`); for `bench`, a
    /// comma-separated list of counts to time every engine at [default:
    /// the cores available; bench: 1 and the cores available]. Results are
    /// bit-identical for every count.
    #[arg(long, global = true, value_parser = parse_threads, value_name = "N[,N...]")]
    threads: Option<Threads>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a model on a CSV file and print its weights digest.
    Train(TrainArgs),
    /// Time the reproducible engine against stock candle on the same jobs
    /// (`bench verify`: verification against training).
    Bench(BenchArgs),
    /// Datasets on a node.
    #[command(subcommand)]
    Dataset(netcli::DatasetCommand),
    /// Training jobs on the chain.
    #[command(subcommand)]
    Job(netcli::JobCommand),
    /// Train open jobs from a node and submit the results.
    Work(netcli::WorkArgs),
    /// Predictions of a fulfilled job's model, served by a node.
    Predict(netcli::PredictArgs),
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum TaskArg {
    Classification,
    Regression,
}

#[derive(clap::Args, Debug)]
struct TrainArgs {
    /// CSV file: header row, numeric columns, target last.
    #[arg(long, value_name = "FILE.csv")]
    data: PathBuf,
    /// What the target column holds.
    #[arg(long)]
    task: TaskArg,
    #[command(flatten)]
    flags: TrainFlags,
    /// Write the weights here as safetensors.
    #[arg(long, value_name = "WEIGHTS.safetensors")]
    out: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchArgs {
    #[command(subcommand)]
    which: Option<BenchCommand>,
    /// Steps timed for the 784-256-256-10 job.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Steps timed for the digits job.
    #[arg(long, default_value_t = 400)]
    digits_steps: usize,
    /// The digits CSV.
    #[arg(long, default_value = "datasets/digits.csv")]
    digits: PathBuf,
    /// Timed rounds per figure; each figure is the best round.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Time only the reproducible engine (for profiling).
    #[arg(long)]
    reproducible_only: bool,
    /// PyTorch's steps/s for the same jobs, as `scripts/bench-train
    /// --pytorch` writes them: JSON `{"mlp": {"1": s, ...}, "digits": ...}`.
    #[arg(long, value_name = "FILE.json")]
    pytorch: Option<PathBuf>,
    /// A line printed under the table about the PyTorch column (why it is
    /// empty, or which build ran).
    #[arg(long, value_name = "TEXT")]
    pytorch_note: Option<String>,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Time auditing, fraud-proof replay and admission of a worker's result
    /// against training it, on one digits job in one run.
    Verify(VerifyBenchArgs),
}

#[derive(clap::Args, Debug)]
struct VerifyBenchArgs {
    /// Passes over the training rows [default: 620, about 30 s of training].
    #[arg(long)]
    epochs: Option<u32>,
    /// Hidden layer widths, comma-separated [default: 512,512].
    #[arg(long, value_parser = parse_hidden)]
    hidden: Option<Hidden>,
    /// Rows per mini-batch [default: 64].
    #[arg(long)]
    batch: Option<u32>,
    /// Segments the steps are cut into [default: 64].
    #[arg(long)]
    segments: Option<u32>,
    /// Seed of the auditors' samples [default: 1].
    #[arg(long)]
    audit_seed: Option<u64>,
    /// Admissions of each transaction per timed repetition [default: 10000].
    #[arg(long)]
    iterations: Option<usize>,
    /// The digits CSV.
    #[arg(long, default_value = "datasets/digits.csv")]
    digits: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Debug)]
struct Threads(Vec<usize>);

fn parse_threads(text: &str) -> Result<Threads, String> {
    text.split(',')
        .map(|t| match t.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(format!(
                "{t:?} is not a thread count, expected a number from 1"
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Threads)
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                e.exit();
            }
            // One line: clap's message up to its usage block, joined (a
            // missing argument is named on the line after the message).
            let text = e.to_string();
            let line: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!("{}", line.join(" "));
            std::process::exit(2);
        }
    };
    trainer::logging::init(cli.log_format, "info");
    let threads = cli.threads.map(|t| t.0);
    let engine_threads = match (&cli.command, threads.as_deref()) {
        (Command::Bench(_), _) | (_, None) => Ok(trainer::pool::available_threads()),
        (_, Some([n])) => Ok(*n),
        (_, Some(list)) => Err(anyhow::anyhow!(
            "--threads: got {list:?}, expected one count (a list is for bench)"
        )),
    };
    let outcome = engine_threads.and_then(|n| {
        trainer::pool::set_threads(n);
        match cli.command {
            Command::Train(args) => run_train(args),
            Command::Bench(args) => run_bench(args, threads),
            Command::Dataset(netcli::DatasetCommand::Put(args)) => netcli::dataset_put(args),
            Command::Job(netcli::JobCommand::Post(args)) => netcli::job_post(*args),
            Command::Work(args) => netcli::work(args),
            Command::Predict(args) => netcli::predict(args),
        }
    });
    if let Err(e) = outcome {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Reads a CSV dataset; errors name the file once.
fn read_csv(path: &std::path::Path, kind: TaskKind) -> anyhow::Result<Dataset> {
    Dataset::from_csv_file(path, kind, &DatasetLimits::default()).map_err(|e| match e {
        DatasetError::Io { .. } => anyhow::Error::new(e),
        other => anyhow::anyhow!("{}: {other}", path.display()),
    })
}

fn run_train(args: TrainArgs) -> anyhow::Result<()> {
    let kind = match args.task {
        TaskArg::Classification => TaskKind::Classification,
        TaskArg::Regression => TaskKind::Regression,
    };
    let dataset = read_csv(&args.data, kind)?;
    let settings = args.flags.settings();
    let spec = settings.job_spec(&dataset)?;
    tracing::info!(
        dataset = %spec.dataset.digest,
        rows = dataset.rows(),
        features = dataset.features(),
        task = ?spec.task,
        kernel = trainer::kernels::kernel_name(),
        "training"
    );

    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} steps, epoch {msg} [{elapsed}<{eta}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let started = Instant::now();
    let mut on_progress = |p: &trainer::Progress| {
        if let Some(bar) = &bar {
            bar.set_length(p.total_steps);
            bar.set_position(p.step);
            bar.set_message(format!("{}/{} loss {:.4}", p.epoch, p.epochs, p.batch_loss));
        } else if let Some(loss) = p.epoch_loss {
            tracing::info!(epoch = p.epoch, epochs = p.epochs, loss, "epoch done");
        }
    };
    let outcome = trainer::train(&spec, &dataset, settings.seed, &mut on_progress)?;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    if let Some(path) = &args.out {
        outcome
            .model
            .save(path)
            .with_context(|| format!("writing {}", path.display()))?;
    }

    let result = &outcome.result;
    let mut json = serde_json::json!({
        "digest": result.weights.to_hex(),
        "segments_root": result.segments_root.to_hex(),
        "segments": outcome.segment_losses(),
        "dataset": spec.dataset.digest.to_hex(),
        "train_loss": result.train_loss.to_f32(),
        "params": outcome.params,
        "steps": outcome.steps,
        "seconds": seconds,
    });
    let mut lines = vec![
        format!("digest {}", result.weights),
        format!(
            "segments root {} ({} segments)",
            result.segments_root, spec.segments
        ),
        format!("train loss {}", result.train_loss.to_f32()),
    ];
    for (prefix, metric) in [
        ("test", &result.metric),
        ("validation", &outcome.validation),
    ] {
        match metric {
            TestMetric::Accuracy { correct, total } => {
                let accuracy = trainer::train::accuracy(metric).unwrap_or(0.0);
                json[format!("{prefix}_accuracy")] = serde_json::json!(accuracy);
                json[format!("{prefix}_correct")] = serde_json::json!(correct);
                json[format!("{prefix}_total")] = serde_json::json!(total);
                lines.push(format!(
                    "{prefix} accuracy {accuracy:.4} ({correct}/{total})"
                ));
            }
            TestMetric::Mse(mse) => {
                json[format!("{prefix}_mse")] = serde_json::json!(mse.to_f32());
                lines.push(format!("{prefix} mse {}", mse.to_f32()));
            }
        }
    }
    if args.json {
        println!("{json}");
    } else {
        lines.push(format!(
            "{} parameters, {} steps, {seconds:.2}s",
            outcome.params, outcome.steps
        ));
        if let Some(path) = &args.out {
            lines.push(format!("weights written to {}", path.display()));
        }
        println!("{}", lines.join("\n"));
    }
    Ok(())
}

fn run_bench(args: BenchArgs, threads: Option<Vec<usize>>) -> anyhow::Result<()> {
    if let Some(BenchCommand::Verify(verify)) = args.which {
        return run_bench_verify(verify);
    }
    if args.steps == 0 || args.digits_steps == 0 {
        bail!("--steps and --digits-steps must be at least 1");
    }
    let mut threads = threads.unwrap_or_else(|| vec![1, trainer::pool::available_threads()]);
    threads.dedup();
    let pytorch: serde_json::Value = match &args.pytorch {
        Some(path) => serde_json::from_slice(
            &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("{}: not JSON", path.display()))?,
        None => serde_json::Value::Null,
    };
    let (x, labels) = bench::synthetic_mnist(1024, 7);
    let mnist = BenchJob {
        name: "mlp 784-256-256-10 b128 adam".into(),
        key: "mlp".into(),
        widths: vec![784, 256, 256, 10],
        x,
        labels,
        batch: 128,
        steps: args.steps,
    };
    let digits = read_csv(&args.digits, TaskKind::Classification)?;
    let prepared = trainer::prep::prepare(&digits, &trainer::settings::DEFAULT_SPLIT, 0)?;
    let digits_job = BenchJob {
        name: "digits 64-128-128-10 b64 adam".into(),
        key: "digits".into(),
        widths: vec![64, 128, 128, 10],
        x: prepared.train.x,
        labels: prepared.train.labels,
        batch: 64,
        steps: args.digits_steps,
    };
    let peak = bench::mul_add_peak_gflops();
    let mut rows = Vec::new();
    for job in [&mnist, &digits_job] {
        for mut row in bench::run(job, &threads, args.rounds, !args.reproducible_only)? {
            row.pytorch = pytorch[job.key.as_str()][row.threads.to_string()].as_f64();
            rows.push(row);
        }
    }
    println!(
        "{}",
        bench::table(&rows, peak, args.pytorch_note.as_deref())
    );
    Ok(())
}

fn run_bench_verify(args: VerifyBenchArgs) -> anyhow::Result<()> {
    // The defaults live in one place, the library's `VerifyBenchConfig`.
    let d = bench_verify::VerifyBenchConfig::default();
    let config = bench_verify::VerifyBenchConfig {
        hidden: args.hidden.map_or(d.hidden, |h| h.0),
        batch: args.batch.unwrap_or(d.batch),
        epochs: args.epochs.unwrap_or(d.epochs),
        segments: args.segments.unwrap_or(d.segments),
        audit_seed: args.audit_seed.unwrap_or(d.audit_seed),
        admission_iterations: args.iterations.unwrap_or(d.admission_iterations),
        admission_repetitions: d.admission_repetitions,
        fraud_proof_seconds: d.fraud_proof_seconds,
    };
    let digits = read_csv(&args.digits, TaskKind::Classification)?;
    let report = bench_verify::run(&digits, &config)?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        println!("{}", report.table());
    }
    Ok(())
}

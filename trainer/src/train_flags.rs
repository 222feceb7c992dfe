//! The hyper-parameter flags of a training run, one set for every command
//! that describes one: `train` (run it here) and `job post` (ask the
//! network to run it). Each flag left out takes its default from the
//! library's [`TrainSettings::default`], the one place defaults live.

use clap::ValueEnum;
use protocol::Loss;
use trainer::{OptimizerKind, TrainSettings};

/// `--loss`.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum LossArg {
    /// Cross-entropy (classification).
    Ce,
    /// Mean squared error (regression).
    Mse,
}

/// `--optimizer`.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum OptimizerArg {
    /// SGD with momentum.
    Sgd,
    /// Adam.
    Adam,
}

/// Hidden layer widths, as `--hidden 64,64` gives them.
#[derive(Clone, Debug)]
pub struct Hidden(pub Vec<u32>);

/// Parses `64,64` (or "" for no hidden layer).
pub fn parse_hidden(text: &str) -> Result<Hidden, String> {
    if text.trim().is_empty() {
        return Ok(Hidden(Vec::new()));
    }
    text.split(',')
        .map(|w| {
            w.trim()
                .parse::<u32>()
                .map_err(|_| format!("{w:?} is not a layer width, expected a list like 64,64"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Hidden)
}

/// The flags; values are checked when the settings become a job spec.
#[derive(clap::Args, Clone, Debug)]
pub struct TrainFlags {
    /// Hidden layer widths, comma-separated ("" for none) [default: 64,64].
    #[arg(long, value_parser = parse_hidden)]
    hidden: Option<Hidden>,
    /// Loss [default: ce for classification, mse for regression].
    #[arg(long)]
    loss: Option<LossArg>,
    /// Optimizer [default: adam].
    #[arg(long)]
    optimizer: Option<OptimizerArg>,
    /// Learning rate [default: 0.003 for Adam, 0.05 for SGD].
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f32>,
    /// SGD momentum [default: 0.9].
    #[arg(long, allow_negative_numbers = true)]
    momentum: Option<f32>,
    /// L1 penalty on weights [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    l1: Option<f32>,
    /// L2 penalty on weights [default: 0.01].
    #[arg(long, allow_negative_numbers = true)]
    l2: Option<f32>,
    /// Rows per mini-batch [default: 32].
    #[arg(long)]
    batch: Option<u32>,
    /// Passes over the training rows [default: 40].
    #[arg(long)]
    epochs: Option<u32>,
    /// Seed of the split and of training [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Segments the steps are cut into, each ending in a committed state
    /// [default: 64; at most the run's steps].
    #[arg(long)]
    segments: Option<u32>,
}

impl TrainFlags {
    /// The settings these flags ask for, defaults filled in.
    pub fn settings(&self) -> TrainSettings {
        let d = TrainSettings::default();
        TrainSettings {
            hidden: self.hidden.clone().map_or(d.hidden, |h| h.0),
            loss: self.loss.map(|l| match l {
                LossArg::Ce => Loss::CrossEntropy,
                LossArg::Mse => Loss::Mse,
            }),
            optimizer: self.optimizer.map_or(d.optimizer, |o| match o {
                OptimizerArg::Sgd => OptimizerKind::Sgd,
                OptimizerArg::Adam => OptimizerKind::Adam,
            }),
            lr: self.lr.or(d.lr),
            momentum: self.momentum.unwrap_or(d.momentum),
            l1: self.l1.unwrap_or(d.l1),
            l2: self.l2.unwrap_or(d.l2),
            batch: self.batch.unwrap_or(d.batch),
            epochs: self.epochs.unwrap_or(d.epochs),
            seed: self.seed.unwrap_or(d.seed),
            segments: self.segments.unwrap_or(d.segments),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Probe {
        #[command(flatten)]
        flags: TrainFlags,
    }

    fn settings(args: &[&str]) -> Result<TrainSettings, clap::Error> {
        Probe::try_parse_from(std::iter::once("probe").chain(args.iter().copied()))
            .map(|p| p.flags.settings())
    }

    #[test]
    fn flags_left_out_take_the_library_defaults_and_given_ones_win() {
        let d = TrainSettings::default();
        let none = settings(&[]).unwrap();
        assert_eq!(
            (
                none.hidden.clone(),
                none.optimizer,
                none.lr,
                none.batch,
                none.epochs,
                none.segments
            ),
            (
                d.hidden.clone(),
                d.optimizer,
                d.lr,
                d.batch,
                d.epochs,
                d.segments
            )
        );
        assert_eq!(none.loss, None, "the task picks the loss");
        let given = settings(&[
            "--hidden",
            "8, 4",
            "--optimizer",
            "sgd",
            "--loss",
            "mse",
            "--lr",
            "-0.5",
            "--batch",
            "7",
            "--segments",
            "3",
        ])
        .unwrap();
        assert_eq!(given.hidden, vec![8, 4]);
        assert_eq!(given.optimizer, OptimizerKind::Sgd);
        assert_eq!(given.loss, Some(Loss::Mse));
        assert_eq!(
            given.lr,
            Some(-0.5),
            "a negative rate reaches the spec check"
        );
        assert_eq!((given.batch, given.segments), (7, 3));
        assert_eq!(
            settings(&["--hidden", ""]).unwrap().hidden,
            Vec::<u32>::new()
        );
    }

    #[test]
    fn a_bad_width_names_the_value_and_what_was_expected() {
        let err = settings(&["--hidden", "64,x"]).unwrap_err().to_string();
        assert!(
            err.contains("\"x\" is not a layer width, expected a list like 64,64"),
            "{err}"
        );
        let err = settings(&["--optimizer", "rmsprop"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("rmsprop") && err.contains("sgd"), "{err}");
    }
}

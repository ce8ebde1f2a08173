use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use qa_eval::{score, ScoreOptions, Version};

/// Evaluate extractive QA with the official SQuAD metrics.
///
/// Exit codes: 0 ok, 1 failed, 2 usage error (or a mode not implemented yet).
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Score predictions against a SQuAD file: a drop-in for the official evaluate-v1.1.py /
    /// evaluate-v2.0.py. Several prediction files (shards) are merged.
    Score(ScoreArgs),
}

#[derive(Args)]
struct ScoreArgs {
    /// SQuAD JSON (plain or gzip).
    #[arg(long)]
    data: PathBuf,
    /// {question id: answer} JSON file(s).
    #[arg(long, required = true, num_args = 1..)]
    predictions: Vec<PathBuf>,
    /// v2.0: {question id: no-answer probability}; enables best_exact/best_f1.
    #[arg(long)]
    na_prob: Option<PathBuf>,
    /// v2.0: predict no-answer when the probability exceeds this.
    #[arg(long, default_value_t = 1.0)]
    na_prob_thresh: f64,
    #[arg(long, value_enum, default_value_t = VersionArg::Auto)]
    version: VersionArg,
    /// Score only the questions that have a prediction.
    #[arg(long)]
    only_predicted: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum VersionArg {
    Auto,
    #[value(name = "1.1")]
    V1,
    #[value(name = "2.0")]
    V2,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(Command::Score(args)) = cli.command else {
        eprintln!("qa-eval: evaluating a checkpoint (forward pass + post-processing) is not implemented yet (issue #5); `qa-eval score` works");
        return ExitCode::from(2);
    };
    let options = ScoreOptions {
        version: match args.version {
            VersionArg::Auto => Version::Auto,
            VersionArg::V1 => Version::V1,
            VersionArg::V2 => Version::V2,
        },
        only_predicted: args.only_predicted,
        na_prob_thresh: args.na_prob_thresh,
    };
    match score(
        &args.data,
        &args.predictions,
        args.na_prob.as_deref(),
        &options,
    ) {
        Ok(scored) => {
            for w in &scored.warnings {
                eprintln!("qa-eval: warning: {w}");
            }
            println!("{}", serde_json::Value::Object(scored.metrics));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("qa-eval: error: {e}");
            ExitCode::from(1)
        }
    }
}

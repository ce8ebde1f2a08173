use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use qa_dist::Collective;
use qa_eval::evaluate::{evaluate, EvalError, EvalInputs};
use qa_eval::postprocess::PostprocessConfig;
use qa_eval::{score, ScoreOptions, Version};
use squad_core::exit::finish;
use squad_core::shard::Shard;
use squad_core::PipelineConfig;

/// Evaluate a QA checkpoint on eval features: batched forward, HF post-processing, and the
/// official SQuAD metrics; or score a predictions file (`qa-eval score`).
///
/// Exit codes: 0 ok, 1 failed, 2 usage error.
#[derive(Parser)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    eval: EvalArgs,
}

#[derive(Args)]
struct EvalArgs {
    /// Checkpoint directory or hub id.
    #[arg(long, required = true)]
    model: Option<String>,
    /// Eval features (qa-features --split eval).
    #[arg(long, required = true)]
    features: Option<PathBuf>,
    /// The examples file the features were made from.
    #[arg(long, required = true)]
    examples: Option<PathBuf>,
    /// Output directory: predictions.json, nbest_predictions.json, null_odds.json (v2),
    /// eval_logits.parquet, metrics.json.
    #[arg(long, required = true)]
    output: Option<PathBuf>,
    /// Pipeline YAML: eval settings (n_best_size, max_answer_length, v2, threshold, batch size).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    batch_size: Option<usize>,
    /// SQuAD v2.0 (also when the examples file says so).
    #[arg(long)]
    v2: bool,
    #[arg(long)]
    null_score_diff_threshold: Option<f64>,
    /// Evaluate only the examples whose position mod N == I (e.g. 0/4) and their features;
    /// merge the shards' predictions with `qa-eval score`.
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
    /// GEMM arithmetic: f32, or bf16 (inputs rounded to bf16, f32 sums; CPUs with
    /// AVX512-BF16) [config eval.precision; default f32].
    #[arg(long)]
    precision: Option<squad_core::Precision>,
    /// Where the model runs: cpu, cuda or cuda:N [default: the config's device, cpu].
    #[arg(long)]
    device: Option<String>,
    /// Compute threads (default: all cores; under MPI, the node's cores divided by its ranks).
    #[arg(long)]
    threads: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Score predictions against a SQuAD file: a drop-in for the official evaluate-v1.1.py /
    /// evaluate-v2.0.py. Several prediction files (shards) are merged.
    Score(ScoreArgs),
    /// Compare two eval_logits.parquet files of the same features (say, a CPU and a GPU run):
    /// prints the largest absolute difference; exit 1 when it exceeds --tolerance.
    CompareLogits(CompareArgs),
}

#[derive(Args)]
struct CompareArgs {
    a: PathBuf,
    b: PathBuf,
    #[arg(long, default_value_t = 1e-3)]
    tolerance: f32,
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
    qa_model::memory::keep_freed_memory();
    let args = match cli.command {
        None => return eval_main(cli.eval),
        Some(Command::CompareLogits(c)) => return finish("qa-eval", compare(&c)),
        Some(Command::Score(args)) => args,
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
        Err(e) => finish("qa-eval", Err(e)),
    }
}

fn compare(args: &CompareArgs) -> anyhow::Result<ExitCode> {
    let diff = qa_eval::evaluate::max_logit_difference(&args.a, &args.b)?;
    let within = diff <= args.tolerance;
    println!(
        "{}",
        serde_json::json!({"max_abs_diff": diff, "tolerance": args.tolerance, "within": within})
    );
    Ok(if within {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `qa-eval` (no subcommand): one process, or a rank of an mpirun job.
fn eval_main(args: EvalArgs) -> ExitCode {
    let comm = match qa_dist::start("qa-eval", args.threads) {
        Ok(comm) => comm,
        Err(e) => return finish("qa-eval", Err(e)),
    };
    let Err(e) = run_eval(args, &*comm) else {
        return ExitCode::SUCCESS;
    };
    let (message, ending) = match e.downcast_ref::<EvalError>() {
        Some(EvalError::Ranks(None)) => (None, qa_dist::Ending::Together),
        Some(inner) => (Some(format!("{e:#}")), inner.ending()),
        None => (Some(format!("{e:#}")), qa_dist::Ending::Alone),
    };
    qa_dist::fail(&*comm, "qa-eval", message.as_deref(), ending)
}

fn run_eval(args: EvalArgs, comm: &dyn Collective) -> anyhow::Result<()> {
    let mut config = PipelineConfig::load_or_default(args.config.as_deref())?;
    let examples = args.examples.expect("required");
    let is_v2 = squad_core::parquet_io::read_metadata(&examples)?
        .get(squad_core::examples::meta::SQUAD_VERSION)
        .is_some_and(|v| v == "2.0");
    let e = &mut config.eval;
    e.version_2_with_negative |= args.v2 || is_v2;
    e.null_score_diff_threshold = args
        .null_score_diff_threshold
        .unwrap_or(e.null_score_diff_threshold);
    e.batch_size = args.batch_size.unwrap_or(e.batch_size);
    e.precision = args.precision.unwrap_or(e.precision);
    if let Some(d) = args.device {
        config.device = d;
    }
    let device = qa_model::device::device_for_rank(&config.device, comm.local_rank())?;
    let output = args.output.expect("required");
    let model = args.model.expect("required");
    config.model.name_or_path = model.clone();
    let inputs = EvalInputs {
        model: &model,
        features: args.features.as_deref().expect("required"),
        examples: &examples,
        batch_size: e.batch_size,
        postprocess: PostprocessConfig {
            n_best_size: e.n_best_size,
            max_answer_length: e.max_answer_length,
            version_2_with_negative: e.version_2_with_negative,
            null_score_diff_threshold: e.null_score_diff_threshold,
        },
        progress: !args.quiet,
        shard: args.shard,
        device,
        precision: e.precision,
    };
    let Some(report) = evaluate(&inputs, &output, comm)? else {
        return Ok(());
    };
    config.save(&output.join("config.yaml"))?;
    eprintln!(
        "qa-eval: {} examples, {} features in {:.1}s ({:.1} features/s) -> {}",
        report.examples,
        report.features,
        report.seconds_forward,
        report.features_per_second,
        output.display()
    );
    println!("{}", serde_json::Value::Object(report.metrics));
    Ok(())
}

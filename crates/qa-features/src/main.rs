use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};
use qa_features::{make_features_file, parity, FeaturesError, QaTokenizer, Settings};
use squad_core::exit::finish;
use squad_core::features::{self, FeatureSplit};
use squad_core::fsutil::sibling_path;
use squad_core::shard::Shard;
use squad_core::PipelineConfig;

/// Turn examples (from squad-ingest) into model features exactly as HF run_qa.py does:
/// `[CLS] question [SEP] context-window [SEP]`, windows of --max-length tokens overlapping
/// by --stride, character offsets, start/end labels (train) or offsets (eval).
///
/// Exit codes: 0 ok, 1 failed (nothing is written), 2 usage error.
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
    build: BuildArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Compare a features file with the HF oracle's (ref_features.py) feature by feature.
    Compare(CompareArgs),
}

#[derive(Args)]
struct BuildArgs {
    /// Pipeline YAML: supplies the tokenizer (model), max_length and stride.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Examples Parquet file (from squad-ingest).
    #[arg(long, required = true)]
    examples: Option<PathBuf>,
    /// Tokenizer: checkpoint directory, tokenizer.json or vocab.txt.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// train: labels; eval (alias dev, validation): per-token offsets for post-processing.
    #[arg(long, value_enum, required = true)]
    split: Option<SplitArg>,
    /// Features Parquet file to write.
    #[arg(long, required = true)]
    output: Option<PathBuf>,
    /// Tokens per window (default 384, or the config's).
    #[arg(long)]
    max_length: Option<usize>,
    /// Tokens shared by consecutive windows (default 128, or the config's).
    #[arg(long)]
    stride: Option<usize>,
    /// Only the examples whose position mod N == I (e.g. 0/4); `example_index` keeps
    /// counting in the whole examples file, so qa-eval takes the same examples file.
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
}

#[derive(Clone, Copy, ValueEnum)]
enum SplitArg {
    Train,
    #[value(alias = "dev", alias = "validation")]
    Eval,
}

#[derive(Args)]
struct CompareArgs {
    /// Our features file.
    #[arg(long)]
    features: PathBuf,
    /// The oracle's Parquet (ref_features.py --out).
    #[arg(long)]
    reference: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Compare(args)) => run_compare(args),
        None => run_build(cli.build),
    };
    finish("qa-features", result)
}

fn run_build(args: BuildArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let (examples_path, output) = (
        args.examples.expect("required"),
        args.output.expect("required"),
    );
    let split = match args.split.expect("required") {
        SplitArg::Train => FeatureSplit::Train,
        SplitArg::Eval => FeatureSplit::Eval,
    };
    let mut config = PipelineConfig::load_or_default(args.config.as_deref())?;
    let tokenizer_path = args
        .tokenizer
        .or_else(|| config.model.tokenizer.clone().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(&config.model.name_or_path));
    config.model.tokenizer = Some(tokenizer_path.display().to_string());
    config.features.max_length = args.max_length.unwrap_or(config.features.max_length);
    config.features.stride = args.stride.unwrap_or(config.features.stride);
    let settings = Settings {
        max_length: config.features.max_length,
        stride: config.features.stride,
    };

    let tok = QaTokenizer::load(&tokenizer_path)?;
    let report = make_features_file(&examples_path, &tok, settings, split, args.shard, &output)
        .map_err(|e| match e {
            // These name their file already.
            FeaturesError::Core(_) | FeaturesError::Tokenizer(_) => anyhow::Error::new(e),
            other => anyhow::anyhow!("{}: {other}", examples_path.display()),
        })?;
    config.save(&sibling_path(&output, "config.yaml"))?;

    for id in &report.skipped_questions {
        eprintln!(
            "qa-features: skipped question {id:?}: too long to leave room for a context window"
        );
    }
    for id in &report.truncated_questions {
        eprintln!(
            "qa-features: question {id:?} cut to {} tokens to leave room for a context window",
            qa_features::MAX_QUERY_TOKENS
        );
    }
    let labels = match split {
        FeatureSplit::Train => format!(
            ", {} labelled CLS, {} HF edge-case labels corrected",
            report.cls_labelled,
            report.hf_edge_case_labels.len()
        ),
        FeatureSplit::Eval => String::new(),
    };
    let shard = args
        .shard
        .map_or(String::new(), |s| format!(" (shard {s})"));
    eprintln!(
        "qa-features: {} examples{shard} -> {} {} features{labels} -> {} in {:.2}s",
        report.examples,
        report.features,
        split.as_str(),
        output.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn run_compare(args: CompareArgs) -> Result<ExitCode> {
    let (ours, split, _) = features::read(&args.features)?;
    let report = parity::compare(&ours, split, &args.reference)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(if report.is_exact() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

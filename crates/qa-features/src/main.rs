use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};
use qa_features::{build_features, parity, QaTokenizer, Settings};
use squad_core::features::{self, meta, FeatureSplit};
use squad_core::fsutil::{sha256_file, sibling_path};
use squad_core::parquet_io::Metadata;
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
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qa-features: error: {e:#}");
            ExitCode::from(1)
        }
    }
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
    let (examples, examples_meta) = squad_core::examples::read(&examples_path)?;
    let (features, report) = build_features(&tok, &examples, settings, split)
        .map_err(|e| anyhow::anyhow!("{}: {e}", examples_path.display()))?;

    let mut md = Metadata::new();
    md.insert(meta::MAX_LENGTH.into(), settings.max_length.to_string());
    md.insert(meta::STRIDE.into(), settings.stride.to_string());
    md.insert(meta::TOKENIZER_SHA256.into(), tok.sha256.clone());
    md.insert(meta::EXAMPLES_SHA256.into(), sha256_file(&examples_path)?);
    if let Some(sha) = examples_meta.get(squad_core::examples::meta::SOURCE_SHA256) {
        md.insert(meta::SOURCE_SHA256.into(), sha.clone());
    }
    md.insert(
        meta::SKIPPED_QUESTIONS.into(),
        report.skipped_questions.len().to_string(),
    );
    md.insert(
        meta::TRUNCATED_QUESTIONS.into(),
        report.truncated_questions.len().to_string(),
    );
    md.insert(
        meta::HF_EDGE_CASE_LABELS.into(),
        report.hf_edge_case_labels.len().to_string(),
    );
    features::write(&output, &features, split, &md)?;
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
    eprintln!(
        "qa-features: {} examples -> {} {} features{labels} -> {} in {:.2}s",
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

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use squad_core::config::{ArticleRange, Split};
use squad_core::exit::finish;
use squad_core::fsutil::sibling_path;
use squad_core::PipelineConfig;
use squad_ingest::{read_squad, stats, write_outputs, IngestOptions, Selection, Shard};

/// Read a SQuAD v1.1/v2.0 file (.json or .json.gz), validate it and write one Parquet row per
/// question, with a stats JSON and the resolved config beside it.
///
/// Exit codes: 0 ok, 1 failed (bad input; nothing is written), 2 usage error.
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
    ingest: IngestArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Print counts, length quantiles, common question words and sample rows of an examples file.
    Stats(StatsArgs),
}

#[derive(Args)]
struct IngestArgs {
    /// Pipeline YAML; with --split, supplies the input file, limit and article range.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Which split of the pipeline config to ingest.
    #[arg(long, value_enum)]
    split: Option<SplitArg>,
    /// SQuAD JSON file (plain or gzip).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Examples Parquet file to write.
    #[arg(long, required = true)]
    output: Option<PathBuf>,
    /// Keep the first N questions in file order.
    #[arg(long)]
    limit: Option<usize>,
    /// Keep questions whose position mod N == I (after --articles and --limit).
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
    /// Keep articles START..END (0-based, END exclusive).
    #[arg(long, value_name = "START..END")]
    articles: Option<ArticleRange>,
    /// Drop invalid questions (counted) instead of failing.
    #[arg(long)]
    lenient: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SplitArg {
    Train,
    Dev,
}

#[derive(Args)]
struct StatsArgs {
    /// Examples Parquet file (from squad-ingest).
    examples: PathBuf,
    /// Also print K sample rows.
    #[arg(long, default_value_t = 0)]
    show: usize,
    /// Print the stats as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Stats(args)) => run_stats(args),
        None => run_ingest(cli.ingest),
    };
    finish("squad-ingest", result)
}

fn usage(msg: &str) -> Result<ExitCode> {
    eprintln!("squad-ingest: usage error: {msg}");
    Ok(ExitCode::from(2))
}

fn run_ingest(args: IngestArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let output = args.output.expect("clap enforces --output");
    let mut config = PipelineConfig::load_or_default(args.config.as_deref())?;
    let split = match (args.split, args.config.is_some()) {
        (Some(SplitArg::Train), _) => Split::Train,
        (Some(SplitArg::Dev), _) => Split::Dev,
        (None, true) => return usage("--config needs --split train|dev"),
        (None, false) => Split::Train,
    };
    let input = match (args.input, args.config.is_some()) {
        (Some(input), _) => input,
        (None, true) => config.split_file(split).to_path_buf(),
        (None, false) => return usage("give --input FILE (or --config FILE --split SPLIT)"),
    };
    let selection = Selection {
        articles: args.articles.or(config.split_articles(split)),
        limit: args.limit.or(config.split_limit(split)),
        shard: args.shard,
    };
    let lenient = args.lenient || config.data.lenient;
    config.set_split(split, input.clone(), selection.limit, selection.articles);
    config.data.lenient = lenient;

    let ingested = read_squad(&input, &IngestOptions { selection, lenient })?;
    for bad in &ingested.dropped {
        eprintln!("squad-ingest: dropped {}: {bad}", input.display());
    }
    let stats = write_outputs(&output, &ingested, &selection)?;
    config.save(&sibling_path(&output, "config.yaml"))?;
    eprintln!(
        "squad-ingest: {} (SQuAD {}): {} questions, {} articles, {} paragraphs, {} unanswerable, {} dropped -> {} in {:.2}s",
        ingested.source_file,
        ingested.squad_version,
        stats.questions,
        stats.articles,
        stats.paragraphs,
        stats.unanswerable,
        ingested.dropped.len(),
        output.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn run_stats(args: StatsArgs) -> Result<ExitCode> {
    let (examples, metadata) = squad_core::examples::read(&args.examples)?;
    let stats = stats::Stats::of(&examples);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&stats).context("serialising stats")?
        );
    } else {
        let source = metadata.get("source_file").map_or("?", String::as_str);
        let version = metadata.get("squad_version").map_or("?", String::as_str);
        println!(
            "{} (source {source}, SQuAD {version})",
            args.examples.display()
        );
        print!("{}", stats.render());
    }
    print!("{}", stats::render_samples(&examples, args.show));
    Ok(ExitCode::SUCCESS)
}

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use squad_core::config_stamp::update_stamps;
use squad_core::exit::finish;

/// Keeps a run's config stamps up to date with its pipeline YAML, for the Makefile:
/// `DIR/SECTION.sha256` for each config section (rewritten only when that section's parsed
/// content changes, so its mtime tells make when to rerun the stages that read it) and
/// `DIR/config.mk`, the make variables (data files, base model, tokenizer, device).
///
/// Exit codes: 0 ok, 1 failed (e.g. an invalid YAML), 2 usage error.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// The pipeline YAML.
    #[arg(long)]
    config: PathBuf,
    /// The stamp directory (the Makefile uses runs/<name>/.stamps).
    #[arg(long)]
    stamps: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = update_stamps(&cli.config, &cli.stamps).map(|_| ExitCode::SUCCESS);
    finish("pipeline-stamp", result)
}

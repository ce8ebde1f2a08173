use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use qa_dist::Comm;
use qa_model::RunOptions;
use qa_train::{train_on, EvalData, TrainError, TrainOptions};
use squad_core::exit::finish;
use squad_core::PipelineConfig;

/// Fine-tune a BERT checkpoint for extractive QA with HF Trainer semantics. Writes
/// checkpoints (resumable with --resume), the final model (OUTPUT/model), metrics.jsonl and
/// a training-curve SVG.
///
/// Exit codes: 0 ok, 1 failed, 2 usage error.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Pipeline YAML (train/eval settings, model); flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Train features (qa-features --split train).
    #[arg(long)]
    features: PathBuf,
    /// Base checkpoint: directory or hub id (default: the config's model.name_or_path).
    #[arg(long)]
    model: Option<String>,
    /// Initialise randomly with the architecture of MODEL/config.json (no weights read).
    #[arg(long)]
    random_init: bool,
    /// Run directory (one qa-train at a time: a second one on it exits at once).
    #[arg(long)]
    output: PathBuf,
    /// Eval features (qa-features --split eval), to evaluate at the end of each epoch.
    #[arg(long, requires = "eval_examples")]
    eval_features: Option<PathBuf>,
    /// The examples file the eval features were made from.
    #[arg(long, requires = "eval_features")]
    eval_examples: Option<PathBuf>,
    /// Continue from the newest checkpoint in OUTPUT (start afresh if there is none).
    #[arg(long)]
    resume: bool,
    /// Start over, replacing an earlier run in OUTPUT.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Peak learning rate of the linear schedule [config train.learning_rate; default 2e-5].
    #[arg(long)]
    learning_rate: Option<f64>,
    /// Features per micro-batch and process (the global batch is this x processes x
    /// accumulation) [config train.batch_size; default 8].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Passes over the training features [config train.epochs; default 1].
    #[arg(long)]
    epochs: Option<usize>,
    /// Stop after this many optimizer steps, whatever --epochs says [default: no limit].
    #[arg(long)]
    max_steps: Option<usize>,
    /// Decoupled AdamW weight decay on weight matrices and embeddings [default 0.01].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Linear warm-up steps; wins over --warmup-ratio when > 0 [default 0].
    #[arg(long)]
    warmup_steps: Option<usize>,
    /// Linear warm-up as a fraction of all optimizer steps [default 0.0].
    #[arg(long)]
    warmup_ratio: Option<f64>,
    /// Clip gradients to this global L2 norm; 0 turns clipping off [default 1.0].
    #[arg(long)]
    max_grad_norm: Option<f64>,
    /// Micro-batches summed into one optimizer step [default 1].
    #[arg(long)]
    gradient_accumulation_steps: Option<usize>,
    /// Seed of the QA head's initialisation, the data order and dropout [default 42].
    #[arg(long)]
    seed: Option<u64>,
    /// Save a checkpoint every N optimizer steps; 0: only at each epoch's end [default 500].
    #[arg(long)]
    save_steps: Option<usize>,
    /// Keep at most this many step checkpoints, newest first [default 2].
    #[arg(long)]
    save_total_limit: Option<usize>,
    /// Log loss, learning rate and gradient norm every N optimizer steps [default 10].
    #[arg(long)]
    logging_steps: Option<usize>,
    /// Pad every batch to max_length (as run_qa.py) instead of its longest feature [default:
    /// off].
    #[arg(long)]
    pad_to_max_length: bool,
    /// Batch features of similar length together (HF group_by_length) [default: on].
    #[arg(long, conflicts_with = "no_group_by_length")]
    group_by_length: bool,
    /// Batches in plain shuffled order (HF Trainer's default).
    #[arg(long)]
    no_group_by_length: bool,
    /// Replay a recorded data order (JSON list of feature indices per epoch, e.g. HF Trainer's
    /// train_order.json) instead of the seeded shuffle.
    #[arg(long)]
    data_order: Option<PathBuf>,
    /// Dropout off, for parity checks [default: dropout as the model's config.json sets it].
    #[arg(long)]
    no_dropout: bool,
    /// On a GPU: train with our fused LayerNorm/softmax CUDA kernels instead of composed candle
    /// ops [default: off until a GPU check has verified them; the CPU always uses its own].
    #[arg(long)]
    fused_cuda_norm: bool,
    /// On a GPU: clip and step AdamW tensor by tensor instead of with the fused kernels (three
    /// launches per step), for comparisons.
    #[arg(long)]
    no_fused_adamw: bool,
    /// GEMM arithmetic: f32, or bf16 (inputs rounded to bf16, f32 sums; CPUs with
    /// AVX512-BF16) [config train.precision; default f32].
    #[arg(long)]
    precision: Option<squad_core::Precision>,
    /// Where to train: cpu, cuda or cuda:N [default: the config's device, cpu].
    #[arg(long)]
    device: Option<String>,
    /// Compute threads (default: all cores; under MPI, the node's cores divided by its ranks).
    /// A run is bitwise reproducible for a fixed count.
    #[arg(long)]
    threads: Option<usize>,
    /// No progress bar or progress lines.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    qa_model::memory::keep_freed_memory();
    // One process, or a rank of an mpirun/srun job (the world size comes from MPI).
    let comm = match qa_dist::start("qa-train", cli.threads) {
        Ok(comm) => comm,
        Err(e) => return finish("qa-train", Err(e)),
    };
    let Err(e) = run(cli, comm.clone()) else {
        return ExitCode::SUCCESS;
    };
    let (message, ending) = match e.downcast_ref::<TrainError>() {
        Some(TrainError::Elsewhere) => (None, qa_dist::Ending::Together),
        Some(inner) if inner.same_on_every_rank() && comm.rank() > 0 => (None, inner.ending()),
        Some(inner) => (Some(format!("{e:#}")), inner.ending()),
        None => (Some(format!("{e:#}")), qa_dist::Ending::Alone),
    };
    qa_dist::fail(&*comm, "qa-train", message.as_deref(), ending)
}

fn run(cli: Cli, comm: Comm) -> anyhow::Result<()> {
    let mut config = PipelineConfig::load_or_default(cli.config.as_deref())?;
    if let Some(m) = cli.model {
        config.model.name_or_path = m;
    }
    if let Some(d) = cli.device {
        config.device = d;
    }
    let t = &mut config.train;
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = cli.$field { t.$field = v; } )* };
    }
    set!(
        learning_rate,
        batch_size,
        epochs,
        weight_decay,
        warmup_steps,
        warmup_ratio,
        max_grad_norm,
        gradient_accumulation_steps,
        seed,
        save_steps,
        save_total_limit,
        logging_steps,
        precision
    );
    if cli.max_steps.is_some() {
        t.max_steps = cli.max_steps;
    }
    if cli.data_order.is_some() {
        t.data_order = cli.data_order;
    }
    t.pad_to_max_length |= cli.pad_to_max_length;
    t.group_by_length = (t.group_by_length || cli.group_by_length) && !cli.no_group_by_length;
    t.dropout &= !cli.no_dropout;
    anyhow::ensure!(t.batch_size > 0, "--batch-size must be at least 1");
    let precision = t.precision;
    let opts = TrainOptions {
        config,
        features: cli.features,
        random_init: cli.random_init,
        output: cli.output,
        eval: cli
            .eval_features
            .zip(cli.eval_examples)
            .map(|(features, examples)| EvalData { features, examples }),
        resume: cli.resume,
        overwrite: cli.overwrite,
        progress: !cli.quiet,
        run: RunOptions {
            fused_cuda_norm: cli.fused_cuda_norm,
            fused_cuda_adamw: !cli.no_fused_adamw,
            precision,
        },
    };
    let writer = comm.rank() == 0;
    let summary = train_on(&opts, comm).context("training failed")?;
    if writer {
        squad_core::exit::say(&format!(
            "qa-train: {} steps, train loss {:.4}, {:.2} features/s; model: {}",
            summary.steps,
            summary.train_loss,
            summary.train_features_per_second,
            summary.model.display()
        ));
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}

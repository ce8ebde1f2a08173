use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use qa_infer::{Answer, InferSettings, Inferencer};
use qa_model::RunPlan;
use serde::Deserialize;
use squad_core::exit::finish;
use squad_core::{Feature, Precision};

/// Answer questions with a BERT QA checkpoint (a local directory or a Hugging Face hub id).
///
/// One question: --question Q --context C (or --context-file F). Batch: --jsonl FILE (or -
/// for stdin) with one {"id", "question", "context"} object per line; one JSON line per
/// input is written to stdout, and a line that fails gets {"id", "line", "error"} (the others
/// go on; the exit code is 1 if any failed).
///
/// Exit codes: 0 ok, 1 failed, 2 usage error.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Checkpoint directory (config.json + model.safetensors + tokenizer) or hub id.
    #[arg(long)]
    model: String,
    #[arg(long, required_unless_present = "jsonl")]
    question: Option<String>,
    #[arg(long, conflicts_with = "context_file", required_unless_present_any = ["jsonl", "context_file"])]
    context: Option<String>,
    #[arg(long)]
    context_file: Option<PathBuf>,
    /// JSONL input (`-` for stdin).
    #[arg(long, conflicts_with_all = ["question", "context", "context_file"])]
    jsonl: Option<String>,
    /// Answers to return, best first.
    #[arg(long, default_value_t = 1)]
    top_k: usize,
    /// Longest answer in tokens.
    #[arg(long, default_value_t = 30)]
    max_answer_length: usize,
    #[arg(long, default_value_t = 384)]
    max_length: usize,
    #[arg(long, default_value_t = 128)]
    stride: usize,
    /// SQuAD v2.0: answer "" when the null span ([CLS]) beats the best span (qa-eval's rule).
    #[arg(long)]
    handle_impossible_answer: bool,
    /// Print JSON instead of text (one question).
    #[arg(long)]
    json: bool,
    /// With --jsonl: print where the time went (tokenize + windows, forward, spans) on stderr.
    #[arg(long, requires = "jsonl")]
    timings: bool,
    /// Where the model runs: cpu, cuda or cuda:N (cuda needs the CUDA build: make build-cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// GEMM arithmetic: f32, or bf16 (inputs rounded to bf16, f32 sums; CPUs with
    /// AVX512-BF16).
    #[arg(long, default_value_t = Precision::F32)]
    precision: Precision,
}

#[derive(Deserialize)]
struct Query {
    #[serde(default)]
    id: serde_json::Value,
    question: String,
    context: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    qa_model::memory::keep_freed_memory();
    finish("qa-infer", run(cli))
}

fn answer_json(id: &serde_json::Value, answers: &[Answer], top_k: usize) -> serde_json::Value {
    let best = answers.first();
    let mut out = serde_json::json!({
        "id": id,
        "answer": best.map(|a| a.answer.as_str()).unwrap_or(""),
        "start": best.map(|a| a.start),
        "end": best.map(|a| a.end),
        "score": best.map(|a| a.score),
    });
    if top_k > 1 {
        out["top_k"] = serde_json::to_value(answers).expect("answers serialise");
    }
    out
}

fn run(cli: Cli) -> Result<ExitCode> {
    let settings = InferSettings {
        max_length: cli.max_length,
        stride: cli.stride,
        max_answer_length: cli.max_answer_length,
        top_k: cli.top_k.max(1),
        handle_impossible_answer: cli.handle_impossible_answer,
    };
    let device = qa_model::checkpoint::device(&cli.device)?;
    let plan = RunPlan::inference(device, cli.precision);
    let inferencer = Inferencer::load(&cli.model, settings, &plan)?;
    if let Some(warning) = inferencer.untrained_head_warning("qa-infer", &cli.model) {
        eprintln!("{warning}");
    }
    if let Some(input) = &cli.jsonl {
        return run_jsonl(&inferencer, input, settings.top_k, cli.timings);
    }
    let question = cli.question.expect("clap requires --question");
    let context = match (&cli.context, &cli.context_file) {
        (Some(c), _) => c.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("{}", f.display()))?
        }
        (None, None) => unreachable!("clap requires a context"),
    };
    let answers = inferencer.answer(&question, &context)?;
    if cli.json {
        println!(
            "{}",
            answer_json(&serde_json::Value::Null, &answers, settings.top_k)
        );
    } else if answers.is_empty() {
        println!("(no answer)");
    } else {
        for a in &answers {
            println!(
                "{}\t(chars {}..{}, score {:.4})",
                a.answer, a.start, a.end, a.score
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Time spent in each step of an answer (`--timings`).
#[derive(Default)]
struct Timings {
    prepare: Duration,
    forward: Duration,
    spans: Duration,
    answered: u32,
}

impl Timings {
    fn answer(&mut self, inferencer: &Inferencer, q: &Query) -> Result<Vec<Answer>> {
        let t = Instant::now();
        let prepared = inferencer.prepare(&q.question, &q.context, inferencer.settings)?;
        let windows: Vec<&Feature> = prepared.windows.iter().collect();
        let t2 = Instant::now();
        let logits = inferencer.logits(&windows)?;
        let t3 = Instant::now();
        let answers = prepared.answers(&logits);
        (self.prepare, self.forward) = (self.prepare + (t2 - t), self.forward + (t3 - t2));
        self.spans += t3.elapsed();
        self.answered += 1;
        Ok(answers)
    }

    fn report(&self) {
        let n = self.answered.max(1);
        let ms = |d: Duration| d.as_secs_f64() * 1e3 / f64::from(n);
        eprintln!(
            "qa-infer: per question ({} answered): tokenize + windows {:.3} ms, forward {:.3} ms, spans {:.3} ms",
            self.answered,
            ms(self.prepare),
            ms(self.forward),
            ms(self.spans)
        );
    }
}

fn run_jsonl(
    inferencer: &Inferencer,
    input: &str,
    top_k: usize,
    timings: bool,
) -> Result<ExitCode> {
    let mut spent = Timings::default();
    let reader: Box<dyn BufRead> = if input == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(input).with_context(|| input.to_string())?,
        ))
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failed = 0usize;
    for (n, line) in reader.lines().enumerate() {
        let line_no = n + 1;
        let line = line.with_context(|| format!("{input}: line {line_no}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let result = serde_json::from_str::<Query>(&line)
            .map_err(|e| anyhow::anyhow!("invalid JSON line: {e}"))
            .and_then(|q| {
                let answers = spent.answer(inferencer, &q)?;
                Ok(answer_json(&q.id, &answers, top_k))
            });
        let value = match result {
            Ok(v) => v,
            Err(e) => {
                failed += 1;
                let id = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v.get("id").cloned())
                    .unwrap_or(serde_json::Value::Null);
                eprintln!("qa-infer: {input}: line {line_no}: {e:#}");
                serde_json::json!({"id": id, "line": line_no, "error": format!("{e:#}")})
            }
        };
        writeln!(out, "{value}")?;
    }
    if timings {
        spent.report();
    }
    if failed > 0 {
        eprintln!("qa-infer: {failed} line(s) of {input} failed");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

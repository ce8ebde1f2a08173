//! `qa-serve-load`: a small, bounded load generator for the bench. C clients (threads, one
//! keep-alive connection each) send the questions of a JSONL file ({"question", "context"}
//! per line) round-robin until N requests are answered; prints one JSON line: questions/s,
//! latency p50/p99 in ms, errors.

use std::io::BufRead;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use squad_core::exit::finish;

#[derive(Parser)]
struct Cli {
    /// The server's answer URL, e.g. http://127.0.0.1:8080/
    #[arg(long)]
    url: String,
    /// JSONL questions.
    #[arg(long)]
    questions: String,
    /// Requests in all.
    #[arg(long)]
    requests: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
}

fn main() -> ExitCode {
    finish("qa-serve-load", run(Cli::parse()))
}

fn bodies(path: &str) -> Result<Vec<String>> {
    let file = std::fs::File::open(path).with_context(|| path.to_string())?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{path}: line {}", n + 1))?;
        let q: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("{path}: line {}", n + 1))?;
        let inputs = serde_json::json!({"question": q["question"], "context": q["context"]});
        out.push(serde_json::json!({ "inputs": inputs }).to_string());
    }
    anyhow::ensure!(!out.is_empty(), "{path}: no questions");
    Ok(out)
}

/// One client: takes request numbers until `requests` are taken; latencies of the answered.
fn client(url: &str, bodies: &[String], next: &AtomicUsize, requests: usize) -> (Vec<f64>, usize) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .build();
    let (mut latencies, mut errors) = (Vec::new(), 0);
    loop {
        let k = next.fetch_add(1, Ordering::Relaxed);
        if k >= requests {
            return (latencies, errors);
        }
        let started = Instant::now();
        let sent = agent
            .post(url)
            .set("Content-Type", "application/json")
            .send_string(&bodies[k % bodies.len()]);
        match sent.map(|r| r.into_string()) {
            Ok(Ok(_)) => latencies.push(started.elapsed().as_secs_f64() * 1e3),
            _ => errors += 1,
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let bodies = Arc::new(bodies(&cli.questions)?);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..cli.concurrency.max(1))
        .map(|_| {
            let (bodies, next, url) = (bodies.clone(), next.clone(), cli.url.clone());
            std::thread::spawn(move || client(&url, &bodies, &next, cli.requests))
        })
        .collect();
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for c in clients {
        let (l, e) = c.join().expect("client thread");
        latencies.extend(l);
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .copied()
    };
    println!(
        "{}",
        serde_json::json!({
            "requests": cli.requests, "concurrency": cli.concurrency, "errors": errors,
            "seconds": seconds, "questions_per_s": latencies.len() as f64 / seconds,
            "p50_ms": at(0.5), "p99_ms": at(0.99),
        })
    );
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

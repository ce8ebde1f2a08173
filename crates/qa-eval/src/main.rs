//! Evaluate a QA checkpoint with SQuAD metrics. Placeholder until issue #5 lands: it produces no output and exits 2.

fn main() -> std::process::ExitCode {
    eprintln!("qa-eval: not implemented yet (issue #5); no output was written");
    std::process::ExitCode::from(2)
}

//! Fine-tune a BERT checkpoint for extractive QA. Placeholder until issue #6 lands: it produces no output and exits 2.

fn main() -> std::process::ExitCode {
    eprintln!("qa-train: not implemented yet (issue #6); no output was written");
    std::process::ExitCode::from(2)
}

//! Answer questions with a QA checkpoint. Placeholder until issue #4 lands: it produces no output and exits 2.

fn main() -> std::process::ExitCode {
    eprintln!("qa-infer: not implemented yet (issue #4); no output was written");
    std::process::ExitCode::from(2)
}

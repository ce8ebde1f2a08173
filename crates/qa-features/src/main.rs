//! Turn examples into tokenized model features. Placeholder until issue #3 lands: it produces no output and exits 2.

fn main() -> std::process::ExitCode {
    eprintln!("qa-features: not implemented yet (issue #3); no output was written");
    std::process::ExitCode::from(2)
}

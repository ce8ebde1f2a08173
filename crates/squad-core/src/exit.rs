//! How every stage ends: exit code 0 when it worked, 1 with one `TOOL: error: ...` line on
//! stderr when it failed (clap exits with 2 on usage errors before this is reached).

use std::process::ExitCode;

pub fn finish<E: std::fmt::Display>(tool: &str, result: Result<ExitCode, E>) -> ExitCode {
    result.unwrap_or_else(|e| {
        eprintln!("{tool}: error: {e:#}");
        ExitCode::from(1)
    })
}

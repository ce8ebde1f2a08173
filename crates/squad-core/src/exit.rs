//! How every stage ends: exit code 0 when it worked, 1 with one `TOOL: error: ...` line on
//! stderr when it failed (clap exits with 2 on usage errors before this is reached).

use std::process::ExitCode;

pub fn finish<E: std::fmt::Display>(tool: &str, result: Result<ExitCode, E>) -> ExitCode {
    result.unwrap_or_else(|e| {
        say(&format!("{tool}: error: {e:#}"));
        ExitCode::from(1)
    })
}

/// Prints `line` and a newline on stderr in one write, so lines from processes sharing the
/// terminal (MPI ranks) do not interleave mid-line.
pub fn say(line: &str) {
    let line = format!("{line}\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
}

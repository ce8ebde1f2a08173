//! One writer per output directory: an exclusive `flock` on `DIR/.lock`, held for the life of
//! the process. The OS drops it when the process ends, however it ends (a `kill -9`, a node
//! failure), so a dead run never leaves a stale lock behind; the file itself stays and only
//! records the holder's pid and tool for the message a second writer gets.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub const LOCK_FILE: &str = ".lock";

/// Held while the process writes into the directory; released on drop or exit.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    pub path: PathBuf,
}

impl DirLock {
    /// Locks `dir` (created if missing) for `tool`, or fails at once with a one-line error
    /// naming the directory, the process holding it and `advice` (what to do next).
    pub fn acquire(dir: &Path, tool: &str, advice: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "another process".to_string(),
                    h => h.to_string(),
                };
                return Err(Error::Locked {
                    path: dir.to_path_buf(),
                    message: format!("in use by {holder}; {advice}"),
                });
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        let record = format!("{tool} (pid {})\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(record.as_bytes()))
            .map_err(|e| Error::io(&path, e))?;
        Ok(DirLock { _file: file, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let first = DirLock::acquire(&run, "qa-train", "wait").unwrap();
        let err = DirLock::acquire(&run, "qa-train", "wait for it to end")
            .unwrap_err()
            .to_string();
        let pid = std::process::id().to_string();
        assert!(
            err.contains("run") && err.contains(&format!("qa-train (pid {pid})")),
            "{err}"
        );
        assert!(
            err.contains("wait for it to end") && !err.contains('\n'),
            "{err}"
        );
        drop(first);
        DirLock::acquire(&run, "qa-eval", "wait").unwrap();
        let holder = std::fs::read_to_string(run.join(LOCK_FILE)).unwrap();
        assert_eq!(holder, format!("qa-eval (pid {pid})\n"));
    }
}

use std::path::PathBuf;

/// Errors of the shared layer. Every variant names the file it is about, so a stage can
/// print it as one line and exit.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a readable Parquet file: {message}", path.display())]
    Parquet { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Schema { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    /// An output directory another process is writing to.
    #[error("{}: {message}", path.display())]
    Locked { path: PathBuf, message: String },
    /// A model or tokenizer name that is neither a local directory nor fetchable.
    #[error("{name:?}: {message}")]
    Resolve { name: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// An IO error while writing `path` (the message says so: "No space left on device" alone
    /// does not tell a write from a read).
    pub fn write(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Write {
            path: path.into(),
            source,
        }
    }

    pub fn schema(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Schema {
            path: path.into(),
            message: message.into(),
        }
    }
}

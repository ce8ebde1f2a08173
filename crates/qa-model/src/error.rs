use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// `action`: what was being done ("write", "read", "copy", ...).
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("{}: bad config.json: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error("{}: cannot read weights: {message}", path.display())]
    Weights { path: PathBuf, message: String },
    #[error("{}: cannot write weights: {message}", path.display())]
    WriteWeights { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },
    #[error("device {name:?}: {message}")]
    Device { name: String, message: String },
    #[error("{message}")]
    Precision {
        precision: qa_kernels::Precision,
        message: String,
    },
    #[error("model {name:?}: {message}")]
    Resolve { name: String, message: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Core(#[from] squad_core::Error),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    pub fn io(path: impl Into<PathBuf>, action: &'static str, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            action,
            source,
        }
    }
}

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: bad config.json: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error("{}: cannot read weights: {message}", path.display())]
    Weights { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },
    #[error("model {name:?}: {message}")]
    Resolve { name: String, message: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Core(#[from] squad_core::Error),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

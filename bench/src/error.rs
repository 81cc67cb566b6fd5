//! Why a measurement could not be taken.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("{context}: {source}")]
    Json { context: String, source: serde_json::Error },
    /// A process or server the bench needs did not behave (it exited, timed out, answered wrong).
    #[error("{0}")]
    Failed(String),
}

pub type Result<T> = std::result::Result<T, BenchError>;

impl BenchError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
        let context = context.into();
        move |source| BenchError::Io { context, source }
    }

    pub fn io_at(action: &str, path: &Path) -> impl FnOnce(std::io::Error) -> BenchError {
        Self::io(format!("{action} {}", path.display()))
    }

    pub fn json(context: impl Into<String>) -> impl FnOnce(serde_json::Error) -> BenchError {
        let context = context.into();
        move |source| BenchError::Json { context, source }
    }
}

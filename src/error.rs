//! One error type for the whole engine. No pyo3 here: `src/python/errors.rs` maps each
//! variant to a Python exception class.

use std::path::PathBuf;

/// Every way an rtml call can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The feature-set document or a constructor argument is invalid.
    #[error("{field}: {message}")]
    Spec { field: String, message: String },

    /// Input data does not fit the feature set: missing column, wrong type, null key, NaN, ...
    #[error("column '{column}': {message}")]
    Schema { column: String, message: String },

    /// A query the online state cannot answer exactly.
    #[error("{0}")]
    Query(String),

    /// A snapshot file is unreadable, truncated, corrupted or of an unknown version.
    #[error("snapshot '{}': {message}", path.display())]
    Snapshot { path: PathBuf, message: String },

    /// One key's stored state (a shared-store value, `online::keystate`) is unreadable,
    /// corrupted, of a newer format or of another feature set.
    #[error("stored state of key {key}: {message}")]
    KeyState { key: String, message: String },

    /// An operating-system error while reading or writing a file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A write-ahead log file is damaged (a corrupt record before valid ones, a bad header, a
    /// position that is not in the log): names the file and the byte offset in it.
    #[error("write-ahead log '{}' at offset {offset}: {message}", path.display())]
    Wal {
        path: PathBuf,
        offset: u64,
        message: String,
    },

    /// The caller asked to stop (e.g. Ctrl-C during a backfill).
    #[error("interrupted")]
    Interrupted,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn spec(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Spec {
            field: field.into(),
            message: message.into(),
        }
    }
    pub fn schema(column: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Schema {
            column: column.into(),
            message: message.into(),
        }
    }
    pub fn snapshot(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Snapshot {
            path: path.into(),
            message: message.into(),
        }
    }
}

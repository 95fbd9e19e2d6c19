//! `Error` -> Python exception, variant by variant. The classes live in
//! `python/rtml/exceptions.py` so they can subclass both `RtmlError` and `ValueError`.

use pyo3::exceptions::{PyFileNotFoundError, PyKeyboardInterrupt, PyOSError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use crate::error::Error;

static SPEC: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static SCHEMA: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static QUERY: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static SNAPSHOT: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static RTML: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn raise(py: Python<'_>, cell: &PyOnceLock<Py<PyType>>, name: &str, message: String) -> PyErr {
    match cell.import(py, "rtml.exceptions", name) {
        Ok(ty) => PyErr::from_type(ty.clone(), message),
        Err(e) => e,
    }
}

pub fn to_py(e: Error) -> PyErr {
    Python::attach(|py| {
        let message = e.to_string();
        match e {
            Error::Spec { .. } => raise(py, &SPEC, "SpecError", message),
            Error::Schema { .. } => raise(py, &SCHEMA, "SchemaError", message),
            Error::Query(_) => raise(py, &QUERY, "QueryError", message),
            Error::Snapshot { .. } => raise(py, &SNAPSHOT, "SnapshotError", message),
            Error::Io { path, source } => {
                let args = (
                    source.raw_os_error().unwrap_or(0),
                    source.to_string(),
                    path.display().to_string(),
                );
                if source.kind() == std::io::ErrorKind::NotFound {
                    PyFileNotFoundError::new_err(args)
                } else {
                    PyOSError::new_err(args)
                }
            }
            Error::Interrupted => PyKeyboardInterrupt::new_err("backfill interrupted"),
        }
    })
}

/// Shorthand: `result.map_err(to_py)`.
pub trait IntoPy<T> {
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for Result<T, Error> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

/// Run `f`, turning a Rust panic (always a bug) into `rtml.RtmlError` instead of pyo3's
/// `PanicException`, a `BaseException` that a service's `except Exception` does not catch.
/// Only for calls whose state survives a panic unchanged (they work on a copy or only read).
pub fn guard<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(Python::attach(|py| {
                raise(
                    py,
                    &RTML,
                    "RtmlError",
                    format!("internal error (a bug in rtml, please report it): {what}"),
                )
            }))
        }
    }
}

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

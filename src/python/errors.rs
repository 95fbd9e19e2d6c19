//! The one way into the engine from Python, and the one way back out for errors.
//!
//! * [`entry`] wraps every `#[pymethods]` entry point that does engine work: it refuses a
//!   poisoned engine, runs the call under the panic guard and poisons the engine when a panic
//!   escaped (the state may be half-updated: no call may answer from it again).
//! * [`detached`] runs engine work without the GIL (where the work is long enough to be worth
//!   it), after checking for a pending Ctrl-C, and converts the engine's error.
//! * [`to_py`] maps `crate::Error` to the package's exception classes. The classes live in
//!   `python/rtml/exceptions.py` (they subclass both `RtmlError` and `ValueError`) and are handed
//!   down once by the package (`_core._init_exceptions`) when it is imported: this layer never
//!   imports the package.

use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::exceptions::{PyFileNotFoundError, PyKeyboardInterrupt, PyOSError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use crate::error::Error;

/// The exception classes of `rtml.exceptions`.
struct Classes {
    rtml: Py<PyType>,
    spec: Py<PyType>,
    schema: Py<PyType>,
    query: Py<PyType>,
    snapshot: Py<PyType>,
    poisoned: Py<PyType>,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

/// Called once by `rtml/__init__.py` with the exception classes (a second call is ignored).
#[pyfunction]
pub fn _init_exceptions(
    py: Python<'_>,
    rtml: Py<PyType>,
    spec: Py<PyType>,
    schema: Py<PyType>,
    query: Py<PyType>,
    snapshot: Py<PyType>,
    poisoned: Py<PyType>,
) {
    let _ = CLASSES.set(
        py,
        Classes {
            rtml,
            spec,
            schema,
            query,
            snapshot,
            poisoned,
        },
    );
}

fn raise(py: Python<'_>, pick: impl Fn(&Classes) -> &Py<PyType>, message: String) -> PyErr {
    match CLASSES.get(py) {
        Some(c) => PyErr::from_type(pick(c).bind(py).clone(), message),
        // only if rtml._core is loaded without the rtml package (never through `import rtml`)
        None => PyRuntimeError::new_err(message),
    }
}

pub fn to_py(e: Error) -> PyErr {
    Python::attach(|py| {
        let message = e.to_string();
        match e {
            Error::Spec { .. } => raise(py, |c| &c.spec, message),
            Error::Schema { .. } => raise(py, |c| &c.schema, message),
            Error::Query(_) => raise(py, |c| &c.query, message),
            Error::Snapshot { .. } => raise(py, |c| &c.snapshot, message),
            // a damaged log file is refused like a damaged snapshot (rtml.SnapshotError)
            Error::Wal { .. } => raise(py, |c| &c.snapshot, message),
            Error::KeyState { .. } => raise(py, |c| &c.snapshot, message),
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

/// `rtml.SchemaError(message)` (for checks made in this layer).
pub fn schema_error(column: &str, message: impl Into<String>) -> PyErr {
    to_py(Error::schema(column, message))
}

/// `rtml.QueryError(message)`.
pub fn query_error(message: impl Into<String>) -> PyErr {
    to_py(Error::Query(message.into()))
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

/// Set once an engine call panicked: the engine refuses every later call.
#[derive(Default)]
pub struct Poison(AtomicBool);

impl Poison {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Every entry point: refuse a poisoned object (`poison`: None for calls whose state survives
/// a panic unchanged: they work on a copy or only read), run `f`, and turn a Rust panic (always
/// a bug) into `rtml.RtmlError` instead of pyo3's `PanicException` (a `BaseException` that a
/// service's `except Exception` does not catch), poisoning the object.
pub fn entry<T>(poison: Option<&Poison>, f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    if let Some(p) = poison {
        if p.is_set() {
            return Err(Python::attach(|py| {
                raise(
                    py,
                    |c| &c.poisoned,
                    "this engine hit an internal error (a bug in rtml, please report it) and \
                     refuses further calls: its state may be half-updated. Restore it from a \
                     snapshot or rebuild it from its events."
                        .to_string(),
                )
            }));
        }
    }
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            if let Some(p) = poison {
                p.0.store(true, Ordering::Release);
            }
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            let poisoned = if poison.is_some() {
                " (this engine now refuses further calls)"
            } else {
                ""
            };
            Err(Python::attach(|py| {
                raise(
                    py,
                    |c| &c.rtml,
                    format!("internal error (a bug in rtml, please report it){poisoned}: {what}"),
                )
            }))
        }
    }
}

/// Engine work `f` without the GIL, after raising a pending Ctrl-C (so an interrupted program
/// stops before a long call starts, not after it changed state); the engine's error converted.
pub fn detached<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> Result<T, Error> + Send,
) -> PyResult<T> {
    py.check_signals()?;
    py.detach(f).py_err()
}

//! `rtml._core.Wal`: the write-ahead log of `src/wal.rs` (payloads as bytes; the Python layer,
//! `rtml.wal.Wal`, stores Arrow IPC streams in them).

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::errors::{detached, entry};
use crate::wal::{Wal, WalOptions};

/// An append-only, checksummed, fsynced log of byte records (see `rtml.wal.Wal`).
#[pyclass(frozen, name = "Wal", module = "rtml._core")]
pub struct PyWal {
    inner: Wal,
}

#[pymethods]
impl PyWal {
    #[new]
    #[pyo3(signature = (path, segment_bytes=64 << 20, group_commit=true, fsync=true))]
    fn new(
        py: Python<'_>,
        path: std::path::PathBuf,
        segment_bytes: u64,
        group_commit: bool,
        fsync: bool,
    ) -> PyResult<PyWal> {
        let opts = WalOptions {
            segment_bytes,
            group_commit,
            fsync,
        };
        entry(None, || {
            let inner = detached(py, move || Wal::open(path, opts))?;
            Ok(PyWal { inner })
        })
    }

    /// Append one record; its position, returned once it is on disk. Releases the GIL.
    fn append(&self, py: Python<'_>, payload: &[u8]) -> PyResult<u64> {
        entry(None, || detached(py, || self.inner.append(payload)))
    }

    /// Append several records in one write; their positions once all are on disk.
    fn append_many(&self, py: Python<'_>, payloads: Vec<Vec<u8>>) -> PyResult<Vec<u64>> {
        entry(None, || {
            detached(py, || {
                let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
                self.inner.append_many(&refs)
            })
        })
    }

    /// Durable records from `position`: [(position, next position, payload bytes)].
    #[pyo3(signature = (position, max_records=1024, max_bytes=64 << 20))]
    fn read<'py>(
        &self,
        py: Python<'py>,
        position: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> PyResult<Vec<(u64, u64, Bound<'py, PyBytes>)>> {
        entry(None, || {
            let records = detached(py, || self.inner.read(position, max_records, max_bytes))?;
            Ok(records
                .into_iter()
                .map(|r| (r.position, r.next, PyBytes::new(py, &r.payload)))
                .collect())
        })
    }

    /// Delete sealed segments that end at or before `position`; the number deleted.
    fn truncate_before(&self, py: Python<'_>, position: u64) -> PyResult<usize> {
        entry(None, || {
            detached(py, || self.inner.truncate_before(position))
        })
    }

    /// Seal the active segment and start a new one.
    fn roll(&self, py: Python<'_>) -> PyResult<()> {
        entry(None, || detached(py, || self.inner.roll()))
    }

    /// Position after the last durable record.
    #[getter]
    fn durable_position(&self) -> u64 {
        self.inner.durable_position()
    }

    /// Oldest position still in the log.
    #[getter]
    fn first_position(&self) -> u64 {
        self.inner.first_position()
    }

    /// [(base position, path)] of the segment files, oldest first.
    fn segments(&self) -> Vec<(u64, String)> {
        self.inner
            .segments()
            .into_iter()
            .map(|(b, p)| (b, p.display().to_string()))
            .collect()
    }

    /// What open did: {"truncated_bytes", "truncated_at", "tail_records"}.
    fn recovery(&self) -> (u64, Option<u64>, u64) {
        let r = self.inner.recovery();
        (r.truncated_bytes, r.truncated_at, r.tail_records)
    }

    /// (records appended, fsyncs) since open.
    fn counters(&self) -> (u64, u64) {
        self.inner.counters()
    }

    #[getter]
    fn path(&self) -> String {
        self.inner.dir().display().to_string()
    }
}

//! An embedded write-ahead log: append-only, checksummed records in segment files.
//!
//! The log is a directory of segments `<base>.wal` (`base`: 20 decimal digits). A *position* is
//! a byte offset in the log's record stream (segment headers excluded): the first record ever
//! written is at 0, a record of `n` payload bytes occupies `RECORD_HEADER + n` positions, and
//! the next segment's base is the previous one's end, so positions never repeat and never go
//! back, even after old segments are deleted.
//!
//! ```text
//! segment  = header record*
//! header   = "RTMLWAL\0" (8) | version u32 LE (1) | reserved u32 (0) | base u64 LE      24 bytes
//! record   = length u32 LE | crc u32 LE | payload (length bytes)
//! crc      = CRC-32 of (position u64 LE | length u32 LE | payload)
//! ```
//!
//! The CRC covers the record's own position and length, so a run of zero bytes (what a file
//! system may leave after a crash) or a record copied from elsewhere never checks out.
//!
//! * [`Wal::append`] returns a record's position only after the record is on disk (`fdatasync`).
//!   Appenders that arrive while an fsync is running wait for the next one, which covers all of
//!   them (group commit): one fsync per group instead of one per record.
//! * [`Wal::open`] scans the newest segment: a torn tail (a record cut short by a crash, or whose
//!   checksum fails with nothing valid after it) is truncated away; it was never acknowledged,
//!   since an acknowledgement follows the fsync. A bad record with a valid record after it is
//!   corruption, not a torn write: [`Error::Wal`] naming the file and offset, never a skip.
//! * Readers see only durable records ([`Wal::read`] stops at [`Wal::durable_position`]).
//! * [`Wal::truncate_before`] deletes sealed segments that end at or before a position (what
//!   every checkpoint covers). The active segment is never deleted; segments roll at
//!   `segment_bytes`.
//!
//! One process owns a log at a time (an exclusive lock on `<dir>/LOCK`).
//!
//! The payload is opaque bytes here; rtml's Python layer stores one Arrow IPC stream (one record
//! batch) per record (docs/streaming.md).

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};

/// Magic bytes at the start of every segment.
pub const SEGMENT_MAGIC: &[u8; 8] = b"RTMLWAL\0";
/// Segment format version.
pub const SEGMENT_VERSION: u32 = 1;
/// Bytes of a segment header.
pub const SEGMENT_HEADER: u64 = 24;
/// Bytes of a record header (length + CRC).
pub const RECORD_HEADER: u64 = 8;
/// Largest payload of one record (1 GiB).
pub const MAX_RECORD: u64 = 1 << 30;

/// How a log is opened.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// A new segment is started when the active one reaches this size (bytes).
    pub segment_bytes: u64,
    /// Share one fsync among appenders waiting at the same time (else one fsync per append,
    /// appends serialized).
    pub group_commit: bool,
    /// fsync at all (false only for tests and benchmarks of the rest: nothing is durable).
    pub fsync: bool,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 << 20,
            group_commit: true,
            fsync: true,
        }
    }
}

/// What open found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes cut off the newest segment (a torn tail); 0 after a clean shutdown.
    pub truncated_bytes: u64,
    /// Position where the torn tail started (None: nothing truncated).
    pub truncated_at: Option<u64>,
    /// Records found in the newest segment.
    pub tail_records: u64,
}

/// One record read back: its position, the position after it, and its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub position: u64,
    pub next: u64,
    pub payload: Vec<u8>,
}

#[derive(Debug)]
struct Segment {
    base: u64,
    path: PathBuf,
}

struct Inner {
    segments: Vec<Segment>,
    /// Base position and path of the active (last) segment.
    active_base: u64,
    active_path: PathBuf,
    /// The active (last) segment, open for appending.
    file: File,
    /// Position after the last record written (maybe not yet synced).
    written: u64,
    /// Position after the last record known to be on disk.
    durable: u64,
    /// An fsync is running outside the lock.
    syncing: bool,
    /// An fsync failed: the log refuses appends (the written-but-unsynced bytes are in doubt).
    failed: Option<String>,
    appends: u64,
    syncs: u64,
}

/// The write-ahead log (see the module docs). Shareable between threads.
pub struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    inner: Mutex<Inner>,
    synced: Condvar,
    recovery: Recovery,
    _lock: File,
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn wal_err(path: &Path, offset: u64, message: impl Into<String>) -> Error {
    Error::Wal {
        path: path.to_path_buf(),
        offset,
        message: message.into(),
    }
}

/// An exclusive, non-blocking flock(2) on the LOCK file: one open log per directory. The kernel
/// releases it when the file is closed (the `Wal` dropped) or the process dies.
fn lock_exclusive(file: &File, lock_path: &Path, dir: &Path) -> Result<()> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a file descriptor we own; no memory is passed.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        return Err(wal_err(
            dir,
            0,
            "the log is open in another process or object (LOCK is held)",
        ));
    }
    Err(io(lock_path, e))
}

/// Little-endian integers at `at` (callers checked the length; a short slice reads as 0).
fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

fn record_crc(position: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&position.to_le_bytes());
    h.update(&(payload.len() as u32).to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn segment_name(base: u64) -> String {
    format!("{base:020}.wal")
}

fn fsync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(|e| io(dir, e))?;
    d.sync_all().map_err(|e| io(dir, e))
}

fn encode_header(base: u64) -> [u8; SEGMENT_HEADER as usize] {
    let mut h = [0u8; SEGMENT_HEADER as usize];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&base.to_le_bytes());
    h
}

/// Check a segment header; returns an error naming the file.
fn check_header(path: &Path, h: &[u8], base: u64) -> Result<()> {
    if &h[..8] != SEGMENT_MAGIC {
        return Err(wal_err(
            path,
            0,
            "not a write-ahead log segment (bad magic bytes)",
        ));
    }
    let version = u32_at(h, 8);
    if version != SEGMENT_VERSION {
        return Err(wal_err(
            path,
            8,
            format!("segment format version {version} (this rtml reads {SEGMENT_VERSION})"),
        ));
    }
    let b = u64_at(h, 16);
    if b != base {
        return Err(wal_err(
            path,
            16,
            format!("header says base position {b}, the file name says {base}"),
        ));
    }
    Ok(())
}

/// Result of parsing one record at a file offset of an in-memory segment.
enum Parsed {
    Ok {
        len: u64,
    },
    /// The header or the payload runs past the end of the data.
    Short,
    /// Complete but the checksum (or the length) is wrong.
    Bad(String),
}

fn parse_at(data: &[u8], off: u64, position: u64) -> Parsed {
    let off = off as usize;
    if data.len() < off + RECORD_HEADER as usize {
        return Parsed::Short;
    }
    let len = u32_at(data, off) as u64;
    let crc = u32_at(data, off + 4);
    if len > MAX_RECORD {
        return Parsed::Bad(format!("record length {len} exceeds the limit"));
    }
    let start = off + RECORD_HEADER as usize;
    let end = start + len as usize;
    if data.len() < end {
        return Parsed::Short;
    }
    if record_crc(position, &data[start..end]) != crc {
        return Parsed::Bad("checksum mismatch".to_string());
    }
    Parsed::Ok { len }
}

/// Whether a complete, valid record starts anywhere after `from` (file offset) in `data`.
/// `base`: the segment's base position (position = base + offset - SEGMENT_HEADER).
fn valid_record_after(data: &[u8], from: u64, base: u64) -> Option<u64> {
    let mut off = from;
    while off + RECORD_HEADER <= data.len() as u64 {
        if let Parsed::Ok { .. } = parse_at(data, off, base + off - SEGMENT_HEADER) {
            return Some(off);
        }
        off += 1;
    }
    None
}

impl Wal {
    /// Open (or create) the log in `dir`, recovering from a crash: see the module docs.
    pub fn open(dir: impl AsRef<Path>, opts: WalOptions) -> Result<Wal> {
        let dir = dir.as_ref().to_path_buf();
        if opts.segment_bytes < SEGMENT_HEADER + RECORD_HEADER {
            return Err(Error::spec(
                "segment_bytes",
                format!("must be at least {}", SEGMENT_HEADER + RECORD_HEADER),
            ));
        }
        fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io(&lock_path, e))?;
        lock_exclusive(&lock, &lock_path, &dir)?;
        let mut segments = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let entry = entry.map_err(|e| io(&dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".wal") {
                if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
                    let base: u64 = stem
                        .parse()
                        .map_err(|_| wal_err(&entry.path(), 0, "segment name out of range"))?;
                    segments.push(Segment {
                        base,
                        path: entry.path(),
                    });
                }
            }
        }
        segments.sort_by_key(|s| s.base);
        let mut recovery = Recovery::default();
        let (file, end) = if let Some(last) = segments.last() {
            let (file, end, rec) = Self::recover_tail(last)?;
            recovery = rec;
            (file, end)
        } else {
            let file = Self::create_segment(&dir, 0)?;
            segments.push(Segment {
                base: 0,
                path: dir.join(segment_name(0)),
            });
            (file, 0)
        };
        let (active_base, active_path) = segments
            .last()
            .map(|s| (s.base, s.path.clone()))
            .unwrap_or_default();
        Ok(Wal {
            dir,
            opts,
            inner: Mutex::new(Inner {
                segments,
                active_base,
                active_path,
                file,
                written: end,
                durable: end,
                syncing: false,
                failed: None,
                appends: 0,
                syncs: 0,
            }),
            synced: Condvar::new(),
            recovery,
            _lock: lock,
        })
    }

    fn create_segment(dir: &Path, base: u64) -> Result<File> {
        let path = dir.join(segment_name(base));
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        f.write_all(&encode_header(base))
            .map_err(|e| io(&path, e))?;
        f.sync_all().map_err(|e| io(&path, e))?;
        fsync_dir(dir)?;
        Ok(f)
    }

    /// Scan the newest segment; cut a torn tail; error on corruption before valid records.
    fn recover_tail(seg: &Segment) -> Result<(File, u64, Recovery)> {
        let path = &seg.path;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io(path, e))?;
        let data = fs::read(path).map_err(|e| io(path, e))?;
        let mut rec = Recovery::default();
        if (data.len() as u64) < SEGMENT_HEADER {
            // created but its header never made it to disk: nothing was acknowledged in it
            if data.iter().any(|&b| b != 0)
                && !SEGMENT_MAGIC.starts_with(&data[..data.len().min(8)])
            {
                return Err(wal_err(
                    path,
                    0,
                    "not a write-ahead log segment (bad magic bytes)",
                ));
            }
            file.set_len(0).map_err(|e| io(path, e))?;
            file.write_all_at(&encode_header(seg.base), 0)
                .map_err(|e| io(path, e))?;
            file.sync_all().map_err(|e| io(path, e))?;
            rec.truncated_bytes = data.len() as u64;
            rec.truncated_at = Some(seg.base);
            file.seek(SeekFrom::End(0)).map_err(|e| io(path, e))?;
            return Ok((file, seg.base, rec));
        }
        check_header(path, &data[..SEGMENT_HEADER as usize], seg.base)?;
        let mut off = SEGMENT_HEADER;
        loop {
            let position = seg.base + off - SEGMENT_HEADER;
            match parse_at(&data, off, position) {
                Parsed::Ok { len } => {
                    off += RECORD_HEADER + len;
                    rec.tail_records += 1;
                }
                Parsed::Short | Parsed::Bad(_) => {
                    let why = match parse_at(&data, off, position) {
                        Parsed::Bad(why) => why,
                        _ => "record runs past the end of the file".to_string(),
                    };
                    // a torn write leaves nothing valid after it; a damaged length or payload
                    // in the middle does (a valid record follows)
                    if let Some(later) = valid_record_after(&data, off + 1, seg.base) {
                        return Err(wal_err(
                            path,
                            off,
                            format!(
                                "corrupt record at position {position} ({why}) followed by a \
                                 valid record at file offset {later}: the log is damaged, not \
                                 torn by a crash; refusing to skip it"
                            ),
                        ));
                    }
                    break;
                }
            }
        }
        if off < data.len() as u64 {
            rec.truncated_bytes = data.len() as u64 - off;
            rec.truncated_at = Some(seg.base + off - SEGMENT_HEADER);
            file.set_len(off).map_err(|e| io(path, e))?;
            file.sync_all().map_err(|e| io(path, e))?;
        }
        file.seek(SeekFrom::Start(off)).map_err(|e| io(path, e))?;
        Ok((file, seg.base + off - SEGMENT_HEADER, rec))
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What open found (a torn tail cut off, records in the newest segment).
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The options the log was opened with.
    pub fn options(&self) -> &WalOptions {
        &self.opts
    }

    /// Append one record; returns its position once it is durable (fsynced).
    pub fn append(&self, payload: &[u8]) -> Result<u64> {
        Ok(self.append_many(&[payload])?[0])
    }

    /// Append several records (in order, one write); their positions once all are durable.
    pub fn append_many(&self, payloads: &[&[u8]]) -> Result<Vec<u64>> {
        for p in payloads {
            if p.len() as u64 > MAX_RECORD {
                return Err(Error::spec(
                    "payload",
                    format!("{} bytes exceeds the record limit of {MAX_RECORD}", p.len()),
                ));
            }
        }
        let mut g = self.inner.lock();
        if let Some(f) = &g.failed {
            return Err(wal_err(
                &self.dir,
                g.written,
                format!("an earlier fsync failed: {f}"),
            ));
        }
        // roll first when the active segment is full (never leave a record half in two files)
        let active_len = g.written - g.active_base;
        if active_len > 0 && SEGMENT_HEADER + active_len >= self.opts.segment_bytes {
            self.roll_locked(&mut g)?;
        }
        let mut buf = Vec::with_capacity(
            payloads
                .iter()
                .map(|p| p.len() + RECORD_HEADER as usize)
                .sum(),
        );
        let mut positions = Vec::with_capacity(payloads.len());
        let mut pos = g.written;
        for p in payloads {
            positions.push(pos);
            buf.extend_from_slice(&(p.len() as u32).to_le_bytes());
            buf.extend_from_slice(&record_crc(pos, p).to_le_bytes());
            buf.extend_from_slice(p);
            pos += RECORD_HEADER + p.len() as u64;
        }
        let seg_path = g.active_path.clone();
        if let Err(e) = g.file.write_all(&buf) {
            // a partial write: cut it off again so the next append starts on a record boundary
            let base = g.active_base;
            let keep = SEGMENT_HEADER + g.written - base;
            let _ = g.file.set_len(keep);
            let _ = g.file.seek(SeekFrom::Start(keep));
            return Err(io(&seg_path, e));
        }
        g.written = pos;
        g.appends += payloads.len() as u64;
        let my_end = pos;
        if !self.opts.fsync {
            g.durable = g.written;
            return Ok(positions);
        }
        if !self.opts.group_commit {
            // serialized: the lock is held through the fsync
            let r = g.file.sync_data();
            g.syncs += 1;
            if let Err(e) = r {
                g.failed = Some(e.to_string());
                return Err(io(&seg_path, e));
            }
            g.durable = g.written;
            return Ok(positions);
        }
        loop {
            if g.durable >= my_end {
                return Ok(positions);
            }
            if let Some(f) = &g.failed {
                return Err(wal_err(&self.dir, my_end, format!("fsync failed: {f}")));
            }
            if g.syncing {
                self.synced.wait(&mut g);
                continue;
            }
            // lead a group: sync everything written so far, outside the lock
            g.syncing = true;
            let target = g.written;
            let file = g.file.try_clone().map_err(|e| io(&seg_path, e));
            let file = match file {
                Ok(f) => f,
                Err(e) => {
                    g.syncing = false;
                    self.synced.notify_all();
                    return Err(e);
                }
            };
            let r = parking_lot::MutexGuard::unlocked(&mut g, || file.sync_data());
            g.syncing = false;
            g.syncs += 1;
            match r {
                Ok(()) => {
                    if target > g.durable {
                        g.durable = target;
                    }
                }
                Err(e) => g.failed = Some(e.to_string()),
            }
            self.synced.notify_all();
        }
    }

    /// Seal the active segment (after syncing it) and start a new one.
    fn roll_locked(&self, g: &mut parking_lot::MutexGuard<'_, Inner>) -> Result<()> {
        // wait for a running group fsync (it holds a clone of the active file)
        while g.syncing {
            self.synced.wait(g);
        }
        let path = g.active_path.clone();
        if self.opts.fsync {
            g.file.sync_data().map_err(|e| io(&path, e))?;
        }
        g.durable = g.written;
        let base = g.written;
        g.file = Self::create_segment(&self.dir, base)?;
        g.segments.push(Segment {
            base,
            path: self.dir.join(segment_name(base)),
        });
        g.active_base = base;
        g.active_path = self.dir.join(segment_name(base));
        Ok(())
    }

    /// Start a new segment now (so that a following `truncate_before` can drop all before it).
    pub fn roll(&self) -> Result<()> {
        let mut g = self.inner.lock();
        if g.written == g.active_base {
            return Ok(()); // the active segment is empty
        }
        self.roll_locked(&mut g)
    }

    /// Position after the last durable record (where the next append goes, once synced).
    pub fn durable_position(&self) -> u64 {
        self.inner.lock().durable
    }

    /// The oldest position still in the log (the base of the oldest segment).
    pub fn first_position(&self) -> u64 {
        self.inner.lock().segments[0].base
    }

    /// (records appended, fsyncs done) since open: appends / fsyncs is the group-commit factor.
    pub fn counters(&self) -> (u64, u64) {
        let g = self.inner.lock();
        (g.appends, g.syncs)
    }

    /// Segment files, oldest first: (base position, path).
    pub fn segments(&self) -> Vec<(u64, PathBuf)> {
        self.inner
            .lock()
            .segments
            .iter()
            .map(|s| (s.base, s.path.clone()))
            .collect()
    }

    /// Delete every sealed segment that ends at or before `position` (everything it holds is
    /// covered by a checkpoint). Returns the number of segments deleted. The active segment
    /// stays.
    pub fn truncate_before(&self, position: u64) -> Result<usize> {
        let doomed: Vec<PathBuf> = {
            let mut g = self.inner.lock();
            let mut n = 0;
            while n + 1 < g.segments.len() && g.segments[n + 1].base <= position {
                n += 1;
            }
            g.segments.drain(..n).map(|s| s.path).collect()
        };
        for p in &doomed {
            match fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(p, e)),
            }
        }
        if !doomed.is_empty() {
            fsync_dir(&self.dir)?;
        }
        Ok(doomed.len())
    }

    /// Durable records from `position` on: at most `max_records`, and at most `max_bytes` of
    /// payload unless the first record alone is larger (it is returned whole). `position` must
    /// be a record boundary between [`Wal::first_position`] and [`Wal::durable_position`].
    pub fn read(&self, position: u64, max_records: usize, max_bytes: usize) -> Result<Vec<Record>> {
        let (seg_base, seg_end, path, durable) = {
            let g = self.inner.lock();
            let first = g.segments[0].base;
            if position < first {
                return Err(wal_err(
                    &g.segments[0].path,
                    0,
                    format!(
                        "position {position} was truncated away (the log starts at {first}): \
                         a checkpoint older than the log's truncation"
                    ),
                ));
            }
            if position > g.durable {
                return Err(wal_err(
                    &self.dir,
                    position,
                    format!(
                        "position {position} is beyond the end of the log ({}): the log lost \
                         acknowledged records, or belongs to another stream",
                        g.durable
                    ),
                ));
            }
            // the segment holding `position` (the last whose base <= position)
            let i = g.segments.partition_point(|s| s.base <= position) - 1;
            let end = if i + 1 < g.segments.len() {
                g.segments[i + 1].base
            } else {
                g.durable
            };
            (
                g.segments[i].base,
                end.min(g.durable),
                g.segments[i].path.clone(),
                g.durable,
            )
        };
        let _ = durable;
        if position == seg_end || max_records == 0 {
            return Ok(Vec::new());
        }
        let file = File::open(&path).map_err(|e| io(&path, e))?;
        let mut out = Vec::new();
        let mut pos = position;
        let mut bytes = 0usize;
        while pos < seg_end && out.len() < max_records {
            let off = SEGMENT_HEADER + pos - seg_base;
            let mut h = [0u8; RECORD_HEADER as usize];
            file.read_exact_at(&mut h, off).map_err(|e| {
                wal_err(
                    &path,
                    off,
                    format!("record header at position {pos} unreadable: {e}"),
                )
            })?;
            let len = u32_at(&h, 0) as u64;
            let crc = u32_at(&h, 4);
            if len > MAX_RECORD || pos + RECORD_HEADER + len > seg_end {
                return Err(wal_err(
                    &path,
                    off,
                    format!(
                        "record at position {pos} claims {len} bytes, past the end of the \
                         segment's durable data ({seg_end}): corrupt, or not a record boundary"
                    ),
                ));
            }
            if !out.is_empty() && bytes + len as usize > max_bytes {
                break;
            }
            let mut payload = vec![0u8; len as usize];
            file.read_exact_at(&mut payload, off + RECORD_HEADER)
                .map_err(|e| wal_err(&path, off, format!("record at position {pos}: {e}")))?;
            if record_crc(pos, &payload) != crc {
                return Err(wal_err(
                    &path,
                    off,
                    format!(
                        "corrupt record at position {pos} (checksum mismatch), or {pos} is not \
                         a record boundary"
                    ),
                ));
            }
            let next = pos + RECORD_HEADER + len;
            bytes += len as usize;
            out.push(Record {
                position: pos,
                next,
                payload,
            });
            pos = next;
        }
        Ok(out)
    }
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("durable", &self.durable_position())
            .finish()
    }
}

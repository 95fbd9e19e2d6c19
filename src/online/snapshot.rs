//! Snapshot files of the online engine.
//!
//! Layout: `RTMLSNAP` magic (8 bytes), format version (u32 LE), payload length (u64 LE),
//! CRC-32 of the payload (u32 LE), then the payload (bincode): the feature-set document,
//! the watermark, counters and every key's state. Written to a temporary file in the same
//! folder, fsynced, then renamed over the target, so a crash at any moment leaves either the
//! old file or the new one, never a torn one.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use bincode::Options;
use serde::{Deserialize, Serialize};

use super::{Counters, Engine, Guard};
use crate::agg::Acc;
use crate::error::{Error, Result};
use crate::input::Key;
use crate::plan::Plan;
use crate::spec::Spec;
use crate::state::{Buf, KeyState, KeyStateV3, KeyStateV4, Tile};

const MAGIC: &[u8; 8] = b"RTMLSNAP";
/// 5: tiled windows keep their settled events' rows (`TileRows`) instead of a summary per tile;
/// a sliding window's min / max deque is left empty when a longer sliding window of the same
/// column holds one (`plan::share_extremes`; format 4 states, every deque filled, read as they
/// are: the longer window's deque answers, the other one is only expired).
/// 4: each key's state ends with its strings (`string_columns`).
/// 3: the guard's state (ids seen, times ahead) and its counters after the body.
/// 2: per-group eager region (`e_lo`, `e_start`). 1 to 4 are read and upgraded.
pub const SNAPSHOT_VERSION: u32 = 5;
const HEADER: usize = 8 + 4 + 8 + 4;

/// A key's state as snapshot format 1 stored it (before the eager region existed).
#[derive(Deserialize)]
struct KeyStateV1 {
    settled: i64,
    last_ts: i64,
    buf: Buf,
    groups: Vec<GroupV1>,
}

#[derive(Deserialize)]
struct GroupV1 {
    lo: u64,
    hi: u64,
    accs: Vec<Acc>,
    tiles: std::collections::VecDeque<Tile>,
}

impl KeyStateV1 {
    /// The same state in today's layout (see [`KeyState::from_v1`]); `None` if it does not
    /// fit `plan`.
    fn upgrade(self, plan: &Plan) -> Option<KeyState> {
        let groups = self
            .groups
            .into_iter()
            .map(|g| (g.lo, g.hi, g.accs, g.tiles))
            .collect();
        KeyState::from_v1(plan, self.settled, self.last_ts, self.buf, groups)
    }
}

/// The counters of formats 1 and 2.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct CountersV2 {
    events_ingested: u64,
    late_events_dropped: u64,
    keys_evicted: u64,
}

#[derive(Serialize)]
struct BodyRef<'a> {
    spec: String,
    key_is_int: Option<bool>,
    watermark: i64,
    counters: CountersV2,
    last_sweep: i64,
    keys: Vec<(&'a Key, &'a KeyState)>,
    /// Format 3 on.
    extra: ExtraRef<'a>,
}

#[derive(Serialize)]
struct ExtraRef<'a> {
    ahead_events_rejected: u64,
    duplicates_dropped: u64,
    guard: &'a Guard,
}

#[derive(Deserialize)]
struct Extra {
    ahead_events_rejected: u64,
    duplicates_dropped: u64,
    guard: Guard,
}

#[derive(Deserialize)]
struct Body<S> {
    spec: String,
    key_is_int: Option<bool>,
    watermark: i64,
    counters: CountersV2,
    last_sweep: i64,
    keys: Vec<(Key, S)>,
}

/// Formats 3 (`S`: [`KeyStateV3`]), 4 ([`KeyStateV4`]) and 5 ([`KeyState`]).
#[derive(Deserialize)]
struct BodyV3<S> {
    spec: String,
    key_is_int: Option<bool>,
    watermark: i64,
    counters: CountersV2,
    last_sweep: i64,
    keys: Vec<(Key, S)>,
    extra: Extra,
}

impl<S> BodyV3<S> {
    fn split(self) -> (Body<S>, Extra) {
        let body = Body {
            spec: self.spec,
            key_is_int: self.key_is_int,
            watermark: self.watermark,
            counters: self.counters,
            last_sweep: self.last_sweep,
            keys: self.keys,
        };
        (body, self.extra)
    }
}

/// Key states of formats 2 to 4 in today's layout.
fn upgrade_keys<S, T>(
    body: Body<S>,
    extra: T,
    upgrade: impl Fn(S) -> KeyState,
) -> (Body<KeyState>, T) {
    let keys = body
        .keys
        .into_iter()
        .map(|(k, s)| (k, upgrade(s)))
        .collect();
    let body = Body {
        spec: body.spec,
        key_is_int: body.key_is_int,
        watermark: body.watermark,
        counters: body.counters,
        last_sweep: body.last_sweep,
        keys,
    };
    (body, extra)
}

pub(super) fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_little_endian()
        .with_varint_encoding()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The snapshot file's bytes for `engine` (`path` only names the target in errors).
pub fn encode(engine: &Engine, path: &Path) -> Result<Vec<u8>> {
    // A consistent cut: no ingest runs while the shards are read (readers still do).
    let meta = engine.ingest_lock();
    let shards: Vec<_> = engine.shards.iter().map(|s| s.read()).collect();
    let body = BodyRef {
        spec: engine.plan.spec.to_json(),
        // A composite key's kind is read back from the keys themselves (their encoding holds
        // it): the format stays as it was.
        key_is_int: meta.key_kind.map(|k| k == crate::key::KIND_INT),
        watermark: meta.watermark,
        counters: CountersV2 {
            events_ingested: meta.counters.events_ingested,
            late_events_dropped: meta.counters.late_events_dropped,
            keys_evicted: meta.counters.keys_evicted,
        },
        last_sweep: meta.last_sweep,
        keys: shards.iter().flat_map(|s| s.keys.iter()).collect(),
        extra: ExtraRef {
            ahead_events_rejected: meta.counters.ahead_events_rejected,
            duplicates_dropped: meta.counters.duplicates_dropped,
            guard: &meta.guard,
        },
    };
    let payload = options()
        .serialize(&body)
        .map_err(|e| Error::snapshot(path, format!("cannot encode: {e}")))?;
    let mut bytes = Vec::with_capacity(HEADER + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

pub fn write(engine: &Engine, path: &Path) -> Result<()> {
    let bytes = encode(engine, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut f = File::create(&tmp).map_err(io(path))?;
        f.write_all(&bytes).map_err(io(path))?;
        f.sync_all().map_err(io(path))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io(path))?;
        // Make the rename itself durable.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        remove_stale_temps(&dir, &name);
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Remove `.<name>.tmp-<pid>` files left by writers that were killed mid-snapshot (their
/// process no longer exists). Best effort; Linux only (where a process is `/proc/<pid>`).
fn remove_stale_temps(dir: &Path, name: &str) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

pub fn read(path: &Path) -> Result<Engine> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    decode(&bytes, path)
}

/// An engine from a snapshot file's bytes (`path` only names the source in errors). Any byte
/// string gives an engine or [`Error::Snapshot`], never a panic (fuzzed: `fuzz/`).
pub fn decode(bytes: &[u8], path: &Path) -> Result<Engine> {
    let bad = |m: &str| Error::snapshot(path, m);
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(bad(
            "not an rtml snapshot (bad magic bytes or file too short)",
        ));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().map_err(|_| bad("bad header"))?);
    if version > SNAPSHOT_VERSION {
        return Err(Error::snapshot(
            path,
            format!("format version {version} was written by a newer rtml (this one reads up to {SNAPSHOT_VERSION})"),
        ));
    }
    if version == 0 {
        return Err(bad("format version 0 does not exist"));
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().map_err(|_| bad("bad header"))?);
    let crc = u32::from_le_bytes(bytes[20..24].try_into().map_err(|_| bad("bad header"))?);
    let payload = &bytes[HEADER..];
    if payload.len() as u64 != len {
        return Err(Error::snapshot(
            path,
            format!(
                "truncated or extended: header says {len} payload bytes, file has {}",
                payload.len()
            ),
        ));
    }
    if crc32fast::hash(payload) != crc {
        return Err(bad("checksum mismatch: the file is corrupted"));
    }
    let decode_err = |e: bincode::Error| Error::snapshot(path, format!("cannot decode: {e}"));
    let mismatch = || bad("key state does not match the embedded feature set");
    if version == 1 {
        let body: Body<KeyStateV1> = options()
            .with_limit(len)
            .deserialize(payload)
            .map_err(decode_err)?;
        let engine = engine_from(path, &body)?;
        for (k, s) in body.keys {
            let s = s.upgrade(&engine.plan).ok_or_else(mismatch)?;
            if !fits_stream(&engine, &body.watermark, &s) {
                return Err(mismatch());
            }
            engine.shard(k.as_ref()).write().keys.insert(k, s);
        }
        composite_kind(&engine, path)?;
        return Ok(engine);
    }
    let (body, extra) = match version {
        2 => {
            let body: Body<KeyStateV3> = options()
                .with_limit(len)
                .deserialize(payload)
                .map_err(decode_err)?;
            upgrade_keys(body, None, KeyStateV3::upgrade)
        }
        3 => {
            let b: BodyV3<KeyStateV3> = options()
                .with_limit(len)
                .deserialize(payload)
                .map_err(decode_err)?;
            let (body, extra) = b.split();
            upgrade_keys(body, Some(extra), KeyStateV3::upgrade)
        }
        4 => {
            let b: BodyV3<KeyStateV4> = options()
                .with_limit(len)
                .deserialize(payload)
                .map_err(decode_err)?;
            let (body, extra) = b.split();
            upgrade_keys(body, Some(extra), KeyStateV4::upgrade)
        }
        _ => {
            let b: BodyV3<KeyState> = options()
                .with_limit(len)
                .deserialize(payload)
                .map_err(decode_err)?;
            let (body, extra) = b.split();
            (body, Some(extra))
        }
    };
    let engine = engine_from(path, &body)?;
    if let Some(extra) = extra {
        let mut meta = engine.ingest_lock();
        if extra.guard.pending.len() >= super::AHEAD_CONFIRM
            || extra.guard.seen.values().any(|&t| t > body.watermark)
        {
            return Err(bad("guard state does not fit the stream"));
        }
        meta.counters.ahead_events_rejected = extra.ahead_events_rejected;
        meta.counters.duplicates_dropped = extra.duplicates_dropped;
        meta.guard = extra.guard;
    }
    for (k, s) in body.keys {
        if !s.consistent_with(&engine.plan) || !fits_stream(&engine, &body.watermark, &s) {
            return Err(mismatch());
        }
        engine.shard(k.as_ref()).write().keys.insert(k, s);
    }
    composite_kind(&engine, path)?;
    Ok(engine)
}

/// A composite-key engine's key kind, from its keys (each a valid encoding of the entity's
/// parts, all of one kind); nothing for a single-key engine.
fn composite_kind(engine: &Engine, path: &Path) -> Result<()> {
    let entity = &engine.plan.spec.entity;
    if !entity.is_composite() {
        return Ok(());
    }
    let mut kind = None;
    for shard in engine.shards.iter() {
        for k in shard.read().keys.keys() {
            let ok = match k {
                Key::Str(s) => crate::key::decode(s).is_some_and(|p| p.len() == entity.parts()),
                Key::Int(_) => false,
            };
            let this = engine.kind_of(k.as_ref());
            if !ok || kind.is_some_and(|prev| prev != this) {
                return Err(Error::snapshot(
                    path,
                    format!("a stored key does not fit the composite entity {entity}"),
                ));
            }
            kind = Some(this);
        }
    }
    let mut meta = engine.ingest_lock();
    meta.key_kind = kind;
    engine.publish(&meta);
    Ok(())
}

/// A key's state is one this engine could have written: not settled past the stream's settled
/// point, no event after the watermark (a forged state would break ingest's invariants).
pub(super) fn fits_stream_at(allowed_lateness: i64, watermark: i64, s: &KeyState) -> bool {
    watermark != i64::MIN
        && s.settled <= watermark.saturating_sub(allowed_lateness)
        && s.last_ts <= watermark
}

fn fits_stream(engine: &Engine, watermark: &i64, s: &KeyState) -> bool {
    fits_stream_at(engine.plan.spec.allowed_lateness, *watermark, s)
}

/// An empty engine with the document's feature set, watermark and counters.
fn engine_from<S>(path: &Path, body: &Body<S>) -> Result<Engine> {
    let spec = Spec::from_json(&body.spec)
        .map_err(|e| Error::snapshot(path, format!("embedded feature set is invalid: {e}")))?;
    let engine = Engine::new(Arc::new(Plan::new(spec)));
    {
        let mut meta = engine.ingest_lock();
        meta.key_kind = match (engine.plan.spec.entity.is_composite(), body.key_is_int) {
            (true, _) | (false, None) => None,
            (false, Some(true)) => Some(crate::key::KIND_INT),
            (false, Some(false)) => Some(crate::key::KIND_STR),
        };
        meta.watermark = body.watermark;
        meta.counters = Counters {
            events_ingested: body.counters.events_ingested,
            late_events_dropped: body.counters.late_events_dropped,
            keys_evicted: body.counters.keys_evicted,
            ..Counters::default()
        };
        meta.last_sweep = body.last_sweep;
        engine.publish(&meta);
    }
    Ok(engine)
}

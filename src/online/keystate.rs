//! One key's state as a self-describing value, for a store shared by many readers (Redis, see
//! docs/shared-state.md): its encoding, the delta segments, decoding and the answer over it.
//! The engine's record of the keys changed since the last publish, and the publish itself,
//! are [`super::publish`].
//!
//! A value is a **base** (a 40-byte header, then the key and its state in exactly the encoding
//! an engine snapshot uses for each of its keys: `snapshot.rs`, the same bincode options and
//! the same serde derivations of [`Key`] and [`KeyState`], so a snapshot and a published value
//! of a key hold the same bytes for it), followed (format 3) by zero or more **delta
//! segments**, each the events the writer applied to the key between two publishes, appended
//! to the stored value (Redis `APPEND`): a publish then costs what the stream brought, not the
//! size of the key's state. The writer rewrites the whole value (compaction) when its segments
//! would outgrow its base.
//!
//! ```text
//! base
//! offset 0   4 bytes  magic "RTKS"
//!        4   u16 LE   format version (4: the key state of snapshot format 5, tiles as rows,
//!                     shared min / max deques; 3: of snapshot format 4, base + delta segments;
//!                     2: the key state of snapshot format 4, with its strings, no segments; 1:
//!                     of snapshot formats 2 and 3)
//!        6   u8       clock of the writer's events: 0 unknown / epoch integers, 1 naive, 2 aware
//!        7   u8       0 (reserved)
//!        8   u64 LE   spec id: the first 8 bytes (big-endian) of the SHA-256 of the feature set's
//!                     JSON document
//!       16   i64 LE   the writing partition's watermark when the value was encoded
//!       24   i64 LE   its settled point (watermark - allowed_lateness)
//!       32   u32 LE   payload length P
//!       36   u32 LE   CRC-32 of the payload
//!       40   P bytes  payload: bincode of (key, key state)
//! delta segment (format 3), any number after the base
//!        0   4 bytes  magic "RTKD"
//!        4   u16 LE   format version (3 or 4: the writer's; the same layout)
//!        6   u16 LE   0 (reserved)
//!        8   u32 LE   offset: the stored value's length before this segment, where it must
//!                     stand (a segment found elsewhere, an append repeated by a retried
//!                     pipeline, is skipped)
//!       12   u32 LE   payload length P (a multiple of 8 x (2 + columns))
//!       16   i64 LE   the writing partition's watermark when the segment was encoded
//!       24   i64 LE   its settled point
//!       32   u32 LE   CRC-32 of bytes 0..32 and of the payload
//!       36   P bytes  the events in the order the writer applied them, each 2 + columns u64 LE
//!                     words: the settled point it arrived at, its time, one word per column
//! ```
//!
//! A reader decodes the base and replays each segment's events with
//! [`KeyState::apply_event`], the function the writer's engine applied them with, so it holds
//! the writer's state; it evaluates a query over it with [`answer`], the function the
//! in-process engine's `get` runs ([`super::Shard::get_masked`]), so both give the same bits.
//! A value that is only segments (the key expired in the store, or was deleted, before an
//! append recreated it) holds no state: it reads as no value ([`decode_value`]), and the writer,
//! which sees the length `APPEND` returns, rewrites it at its next publish.

use bincode::Options;

use super::snapshot::{fits_stream_at, options};
use crate::error::{Error, Result};
use crate::input::{Key, KeyRef};
use crate::plan::Plan;
use crate::state::{KeyState, KeyStateV3, KeyStateV4};

pub const MAGIC: &[u8; 4] = b"RTKS";
/// Magic bytes of a delta segment.
pub const DELTA_MAGIC: &[u8; 4] = b"RTKD";
/// Format version of a published key state (4: the per-key encoding of snapshot format 5:
/// tiled windows as rows, and shorter sliding windows leave their min / max deques empty, read
/// by older builds wrongly, so refused by them; 3: a base and delta segments; 2: the per-key
/// encoding of snapshot format 4, with the key's strings; 1: of snapshot formats 2 and 3; 1 to 3
/// are read and upgraded).
pub const KEYSTATE_VERSION: u16 = 4;
/// Bytes before the payload.
pub const HEADER: usize = 40;
/// Bytes before a delta segment's payload.
pub const DELTA_HEADER: usize = 36;
/// Number of hash-tag buckets of the store's key layout (see [`store_key`]).
pub const BUCKETS: u64 = 1024;

/// What one publish hands to the store for a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    /// The whole value (a base): replaces what the store holds.
    Full(&'a [u8]),
    /// A delta segment to append to the stored value, which then is `len` bytes long (a store
    /// reporting another length no longer holds what the writer wrote: give the key to
    /// [`Engine::mark_full`](super::Engine::mark_full)).
    Delta { bytes: &'a [u8], len: usize },
}

/// Features of a key at `t` from its state (`None`: a key without state, answered with the
/// empty-history values): the one function behind both the in-process `get` and a remote one.
#[inline]
pub fn answer(
    plan: &Plan,
    state: Option<&KeyState>,
    t: i64,
    out: &mut [f64],
    mask: Option<&[bool]>,
) -> Result<()> {
    match state {
        Some(state) => state.query_masked(plan, t, out, mask),
        None => {
            out.copy_from_slice(&plan.empty);
            Ok(())
        }
    }
}

/// The strings of the string outputs (`Output::text`) of an [`answer`] `out` from `state`,
/// one per string output in output order (`None`: null), into `into` (cleared first).
pub fn texts(plan: &Plan, state: Option<&KeyState>, out: &[f64], into: &mut Vec<Option<String>>) {
    into.clear();
    for (o, v) in plan.outputs.iter().zip(out) {
        if o.text {
            into.push(state.and_then(|s| s.text(*v)).map(str::to_string));
        }
    }
}

/// What the header of a value says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Clock of the writer's events: 0 unknown (or epoch integers), 1 naive, 2 aware.
    pub zone: u8,
    pub spec_id: u64,
    /// The writing partition's watermark when the value was encoded.
    pub watermark: i64,
    /// Its settled point (watermark - allowed_lateness).
    pub settle_point: i64,
}

/// A decoded value.
#[derive(Debug)]
pub struct Decoded {
    pub header: Header,
    pub key: Key,
    pub state: KeyState,
}

/// Append the value (a base without segments) of `key`'s `state` to `buf`.
pub fn encode_into(buf: &mut Vec<u8>, h: &Header, key: &Key, state: &KeyState) -> Result<()> {
    encode_versioned(buf, h, key, state, KEYSTATE_VERSION)
}

/// [`encode_into`] with a given format version in the header (tests write older versions).
pub fn encode_versioned(
    buf: &mut Vec<u8>,
    h: &Header,
    key: &Key,
    state: &KeyState,
    version: u16,
) -> Result<()> {
    let start = buf.len();
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&version.to_le_bytes());
    buf.push(h.zone);
    buf.push(0);
    buf.extend_from_slice(&h.spec_id.to_le_bytes());
    buf.extend_from_slice(&h.watermark.to_le_bytes());
    buf.extend_from_slice(&h.settle_point.to_le_bytes());
    buf.extend_from_slice(&[0u8; 8]); // length and CRC, below
    options()
        .serialize_into(&mut *buf, &(key, state))
        .map_err(|e| Error::KeyState {
            key: key_text(key.as_ref()),
            message: format!("cannot encode: {e}"),
        })?;
    let payload = &buf[start + HEADER..];
    let (len, crc) = (payload.len() as u32, crc32fast::hash(payload));
    buf[start + 32..start + 36].copy_from_slice(&len.to_le_bytes());
    buf[start + 36..start + 40].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Append a delta segment holding `events` (each `2 + columns` words: the settled point it
/// arrived at, its time, its column words) to `buf`, for a stored value `offset` bytes long.
pub fn encode_delta_into(
    buf: &mut Vec<u8>,
    offset: usize,
    watermark: i64,
    settle_point: i64,
    events: &[u64],
) {
    let start = buf.len();
    buf.extend_from_slice(DELTA_MAGIC);
    buf.extend_from_slice(&KEYSTATE_VERSION.to_le_bytes());
    buf.extend_from_slice(&[0u8; 2]);
    buf.extend_from_slice(&(offset as u32).to_le_bytes());
    buf.extend_from_slice(&((events.len() * 8) as u32).to_le_bytes());
    buf.extend_from_slice(&watermark.to_le_bytes());
    buf.extend_from_slice(&settle_point.to_le_bytes());
    buf.extend_from_slice(&[0u8; 4]); // CRC, below
    for w in events {
        buf.extend_from_slice(&w.to_le_bytes());
    }
    let crc = delta_crc(&buf[start..]);
    buf[start + 32..start + 36].copy_from_slice(&crc.to_le_bytes());
}

/// CRC-32 of a delta segment: its first 32 bytes and its payload.
fn delta_crc(segment: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(segment.get(..32).unwrap_or_default());
    h.update(segment.get(DELTA_HEADER..).unwrap_or_default());
    h.finalize()
}

/// The watermark a published value (or delta segment) carries.
pub fn watermark_of(v: Value<'_>) -> i64 {
    match v {
        Value::Full(b) => le_u64(b, 16) as i64,
        Value::Delta { bytes, .. } => le_u64(bytes, 16) as i64,
    }
}

/// How a key is named in errors: `42` or `'abc'`.
pub fn key_text(key: KeyRef<'_>) -> String {
    match key {
        KeyRef::Int(i) => i.to_string(),
        KeyRef::Str(s) => format!("{s:?}"),
    }
}

/// [`decode`], except that a value holding only delta segments (its base expired or was
/// deleted in the store before an append recreated it) is `None`: no stored state, as if the
/// key had no value (the writer rewrites it at its next publish).
pub fn decode_value(
    bytes: &[u8],
    plan: &Plan,
    spec_id: u64,
    key: KeyRef<'_>,
) -> Result<Option<Decoded>> {
    if bytes.get(..4) == Some(&DELTA_MAGIC[..]) {
        return Ok(None);
    }
    decode(bytes, plan, spec_id, key).map(Some)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        w.copy_from_slice(s);
    }
    u32::from_le_bytes(w)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        w.copy_from_slice(s);
    }
    u64::from_le_bytes(w)
}

/// Decode the value stored for `key` (a base, then its delta segments replayed) and check it
/// against the reader's feature set (`plan`, `spec_id`): any byte string gives a state this
/// engine could have written, or [`Error::KeyState`] naming the key, never a panic.
pub fn decode(bytes: &[u8], plan: &Plan, spec_id: u64, key: KeyRef<'_>) -> Result<Decoded> {
    let bad = |m: String| Error::KeyState {
        key: key_text(key),
        message: m,
    };
    if bytes.len() < HEADER || &bytes[..4] != MAGIC {
        if bytes.get(..4) == Some(&DELTA_MAGIC[..]) {
            return Err(bad("a delta segment without its base".into()));
        }
        return Err(bad(
            "not an rtml key state (bad magic bytes or value too short)".into(),
        ));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version > KEYSTATE_VERSION {
        return Err(bad(format!(
            "format version {version} was written by a newer rtml (this one reads up to {KEYSTATE_VERSION})"
        )));
    }
    if version == 0 {
        return Err(bad("format version 0 does not exist".into()));
    }
    let mut header = Header {
        zone: bytes[6],
        spec_id: le_u64(bytes, 8),
        watermark: le_u64(bytes, 16) as i64,
        settle_point: le_u64(bytes, 24) as i64,
    };
    if header.spec_id != spec_id {
        return Err(bad(format!(
            "written for another feature set (spec id {:016x}, this one is {spec_id:016x})",
            header.spec_id
        )));
    }
    if header.zone > 2 {
        return Err(bad(format!("unknown clock {}", header.zone)));
    }
    let len = le_u32(bytes, 32) as usize;
    let crc = le_u32(bytes, 36);
    let rest = &bytes[HEADER..];
    // format 3: delta segments may follow the base's payload
    let (payload, mut segments) = if version >= 3 && rest.len() >= len {
        rest.split_at(len)
    } else {
        (rest, &[][..])
    };
    if payload.len() != len {
        return Err(bad(format!(
            "truncated or extended: header says {len} payload bytes, value has {}",
            payload.len()
        )));
    }
    if crc32fast::hash(payload) != crc {
        return Err(bad("checksum mismatch: the value is corrupted".into()));
    }
    let (stored, mut state): (Key, KeyState) = if version >= 4 {
        options()
            .with_limit(len as u64)
            .deserialize(payload)
            .map_err(|e| bad(format!("cannot decode: {e}")))?
    } else if version >= 2 {
        // versions 2 and 3: the key state of snapshot format 4 (a summary per tile)
        let (k, s): (Key, KeyStateV4) = options()
            .with_limit(len as u64)
            .deserialize(payload)
            .map_err(|e| bad(format!("cannot decode: {e}")))?;
        (k, s.upgrade())
    } else {
        // version 1: the key state of snapshot format 3 (no strings)
        let (k, s): (Key, KeyStateV3) = options()
            .with_limit(len as u64)
            .deserialize(payload)
            .map_err(|e| bad(format!("cannot decode: {e}")))?;
        (k, s.upgrade())
    };
    if stored.as_ref() != key {
        return Err(bad(format!(
            "the value holds the state of key {}",
            key_text(stored.as_ref())
        )));
    }
    let lateness = plan.spec.allowed_lateness;
    let fits = |h: &Header, state: &KeyState| {
        fits_stream_at(lateness, h.watermark, state)
            && h.settle_point == h.watermark.saturating_sub(lateness)
    };
    if !state.consistent_with(plan) || !fits(&header, &state) {
        return Err(bad("key state does not match the feature set".into()));
    }
    // the delta segments, replayed in order with the writer's function
    let stride = 2 + plan.columns.len();
    let mut segment = 0usize;
    while !segments.is_empty() {
        segment += 1;
        let at = bytes.len() - segments.len();
        let seg_bad = |m: &str| bad(format!("delta segment {segment} (at byte {at}): {m}"));
        if segments.len() < DELTA_HEADER || segments.get(..4) != Some(&DELTA_MAGIC[..]) {
            return Err(seg_bad("bad magic bytes or too short"));
        }
        let v = u16::from_le_bytes([segments[4], segments[5]]);
        if v > KEYSTATE_VERSION {
            return Err(bad(format!(
                "format version {v} (a delta segment) was written by a newer rtml (this one reads up to {KEYSTATE_VERSION})"
            )));
        }
        if v < 3 {
            return Err(seg_bad(&format!(
                "format version {v} has no delta segments"
            )));
        }
        let offset = le_u32(segments, 8) as usize;
        let n = le_u32(segments, 12) as usize;
        let h = Header {
            watermark: le_u64(segments, 16) as i64,
            settle_point: le_u64(segments, 24) as i64,
            ..header
        };
        let Some(seg) = segments.get(..DELTA_HEADER + n) else {
            return Err(seg_bad("truncated"));
        };
        if delta_crc(seg) != le_u32(seg, 32) {
            return Err(seg_bad("checksum mismatch: the value is corrupted"));
        }
        segments = &segments[DELTA_HEADER + n..];
        if offset != at {
            // written for another place: an append repeated by a retried pipeline
            continue;
        }
        if plan.has_text_columns() || n % (8 * stride) != 0 || h.watermark < header.watermark {
            return Err(seg_bad("does not match the feature set"));
        }
        let mut row: Vec<u64> = vec![0; stride];
        for event in seg[DELTA_HEADER..].chunks_exact(8 * stride) {
            for (w, b) in row.iter_mut().zip(event.chunks_exact(8)) {
                *w = le_u64(b, 0);
            }
            let (settle, ts) = (row[0] as i64, row[1] as i64);
            // what the writer's engine guarantees of every event it applies
            let settled = if settle.saturating_sub(state.settled) > lateness / 8 {
                settle.max(state.settled)
            } else {
                state.settled
            };
            if ts < settled || ts > h.watermark || settle > h.settle_point {
                return Err(seg_bad("an event the writer could not have applied"));
            }
            state.apply_event(plan, ts, &row[2..], settle);
        }
        if !fits(&h, &state) {
            return Err(seg_bad("does not match the feature set"));
        }
        header = h;
    }
    Ok(Decoded {
        header,
        key: stored,
        state,
    })
}

/// The bucket (hash tag) of a key in the store layout: 10 bits of a hash independent of the
/// engine's shards.
pub fn bucket_of(key: KeyRef<'_>) -> u64 {
    let h = match key {
        KeyRef::Int(i) => xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()),
        KeyRef::Str(s) => xxhash_rust::xxh3::xxh3_64(s.as_bytes()),
    };
    h % BUCKETS
}

/// The store key of an entity: `<ns>:{<bucket>}:i:<int>` or `<ns>:{<bucket>}:s:<utf8>`. The
/// braces are a Redis Cluster hash tag: a batch of keys splits into at most [`BUCKETS`] slots.
pub fn store_key(ns: &str, key: KeyRef<'_>) -> Vec<u8> {
    let bucket = bucket_of(key);
    let mut digits = [0u8; 20];
    let mut out = Vec::with_capacity(ns.len() + 40);
    out.extend_from_slice(ns.as_bytes());
    out.extend_from_slice(b":{");
    out.extend_from_slice(crate::resp::int_bytes(&mut digits, bucket as i64));
    match key {
        KeyRef::Int(i) => {
            out.extend_from_slice(b"}:i:");
            out.extend_from_slice(crate::resp::int_bytes(&mut digits, i));
        }
        KeyRef::Str(s) => {
            out.extend_from_slice(b"}:s:");
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::publish::Published;
    use super::super::Engine;
    use super::*;
    use crate::spec::Spec;
    use crate::state::NULL;

    const M: i64 = 60_000_000_000;

    fn plan(features: &str) -> Arc<Plan> {
        let doc = format!(
            r#"{{"version": 1, "entity": "k", "timestamp": "ts", "allowed_lateness": "10m",
            "features": [{features}]}}"#
        );
        Arc::new(Plan::new(Spec::from_json(&doc).unwrap()))
    }

    fn full_plan() -> Arc<Plan> {
        plan(
            r#"{"agg": "count", "window": "1h"},
              {"agg": "sum", "column": "v", "window": "1h"},
              {"agg": "mean", "column": "v", "window": "30m"},
              {"agg": "std", "column": "v"},
              {"agg": "min", "column": "v", "window": "1h"},
              {"agg": "max", "column": "v"},
              {"agg": "first", "column": "v", "window": "30m"},
              {"agg": "last", "column": "v"},
              {"agg": "quantile", "column": "v", "q": 0.9, "window": "1h"},
              {"agg": "decayed_sum", "column": "v", "half_life": "10m", "window": "1h"},
              {"agg": "time_since_last", "window": "30m"},
              {"agg": "sum", "column": "v", "window": "1h", "hop": "15m"}"#,
        )
    }

    /// A deterministic stream over keys 0..5 (ints or strings), a little out of order.
    fn feed(eng: &Engine, str_keys: bool, from: i64, n: i64) {
        let mut r: u64 = 0x9E37_79B9_7F4A_7C15 ^ from as u64;
        for i in from..from + n {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            let k = (r % 5) as i64;
            let ts = i * M / 3 - ((r >> 8) % 5) as i64 * M;
            let v = if (r >> 20) % 11 == 0 {
                NULL
            } else {
                (((r >> 24) % 1000) as f64 / 7.0).to_bits()
            };
            let name = format!("key-{k}");
            let key = if str_keys {
                KeyRef::Str(&name)
            } else {
                KeyRef::Int(k)
            };
            eng.ingest_one(key, ts, &[v], None).unwrap();
        }
    }

    fn bits(v: &[f64]) -> Vec<u64> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    fn published(eng: &Engine, all: bool) -> Vec<(Key, Vec<u8>)> {
        let mut out = Vec::new();
        eng.publish_changed(all, false, 7, 2, |k, _, v| {
            match v {
                Value::Full(v) => out.push((k.clone(), v.to_vec())),
                Value::Delta { .. } => panic!("a delta without deltas"),
            }
            true
        })
        .unwrap();
        out
    }

    /// A publish with delta segments into a simulated store (SET replaces, APPEND appends and
    /// answers the length, checked like the Redis writer checks it).
    fn publish_into(
        eng: &Engine,
        all: bool,
        store: &mut hashbrown::HashMap<Key, Vec<u8>>,
    ) -> Published {
        let mut stale = Vec::new();
        let p = eng
            .publish_changed(all, true, 7, 2, |k, _, v| {
                match v {
                    Value::Full(v) => {
                        store.insert(k.clone(), v.to_vec());
                    }
                    Value::Delta { bytes, len } => {
                        let held = store.entry(k.clone()).or_default();
                        held.extend_from_slice(bytes);
                        if held.len() != len {
                            stale.push(k.clone());
                        }
                    }
                }
                true
            })
            .unwrap();
        eng.mark_full(&stale);
        p
    }

    /// Every key of `store` answers like the engine at `wm + offsets` (errors included).
    fn store_answers_like_engine(
        eng: &Engine,
        plan: &Plan,
        store: &hashbrown::HashMap<Key, Vec<u8>>,
        offsets: &[i64],
    ) {
        let wm = eng.watermark();
        let nf = plan.n_features();
        for (k, v) in store {
            let d = decode(v, plan, 7, k.as_ref()).unwrap();
            assert!(d.header.watermark <= wm, "{k:?}");
            for &m in offsets {
                let t = wm.saturating_add(m * M);
                let (mut got, mut want) = (vec![0.0; nf], vec![0.0; nf]);
                let a = answer(plan, Some(&d.state), t, &mut got, None);
                let b = eng.get(k.as_ref(), t, &mut want);
                match (a, b) {
                    (Ok(()), Ok(())) => assert_eq!(bits(&got), bits(&want), "{k:?} at {m}"),
                    (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                    (a, b) => panic!("{k:?} at {m}: remote {a:?}, engine {b:?}"),
                }
            }
        }
    }

    #[test]
    fn delta_segments_answer_like_the_engine_and_compact() {
        for str_keys in [false, true] {
            let plan = full_plan();
            let eng = Engine::new(Arc::clone(&plan));
            eng.track_changes(true);
            let mut store = hashbrown::HashMap::new();
            let mut deltas = 0;
            let mut wholes_after_first = 0;
            for round in 0..60 {
                feed(&eng, str_keys, round * 7, 7);
                let p = publish_into(&eng, false, &mut store);
                deltas += p.deltas;
                if round > 0 {
                    wholes_after_first += p.values - p.deltas;
                }
                store_answers_like_engine(&eng, &plan, &store, &[-10, 0, 1, 37, 180]);
            }
            assert!(deltas > 100, "{deltas}");
            // compaction: segments never outgrow the base; some keys were rewritten whole
            assert!(wholes_after_first > 0);
            for (k, v) in &store {
                let base = HEADER + le_u32(v, 32) as usize;
                assert!(v.len() - base <= base, "{k:?}: {} > {base}", v.len() - base);
            }
            // a whole publish gives values that answer the same
            let mut whole = hashbrown::HashMap::new();
            for (k, v) in published(&eng, true) {
                whole.insert(k, v);
            }
            store_answers_like_engine(&eng, &plan, &whole, &[-10, 0, 1, 37, 180]);
        }
    }

    #[test]
    fn segment_without_base_repeated_or_bad() {
        let plan = full_plan();
        let eng = Engine::new(Arc::clone(&plan));
        eng.track_changes(true);
        let mut store = hashbrown::HashMap::new();
        feed(&eng, false, 0, 100);
        publish_into(&eng, false, &mut store);
        feed(&eng, false, 100, 5);
        let mut segs = Vec::new();
        eng.publish_changed(false, true, 7, 2, |k, _, v| {
            if let Value::Delta { bytes, .. } = v {
                segs.push((k.clone(), bytes.to_vec()));
            }
            true
        })
        .unwrap();
        assert!(!segs.is_empty());
        for (k, seg) in &segs {
            let key = k.as_ref();
            let base = store[k].clone();
            let mut one = base.clone();
            one.extend_from_slice(seg);
            let good = decode(&one, &plan, 7, key).unwrap();
            // a segment alone (the base expired in the store): no stored state
            assert!(decode_value(seg, &plan, 7, key).unwrap().is_none());
            let m = decode(seg, &plan, 7, key).unwrap_err().to_string();
            assert!(
                m.contains("without its base") && m.contains(&key_text(key)),
                "{m}"
            );
            // the same segment appended twice (a retried pipeline): the copy is skipped
            let mut twice = one.clone();
            twice.extend_from_slice(seg);
            let d = decode(&twice, &plan, 7, key).unwrap();
            assert_eq!(format!("{:?}", d.state), format!("{:?}", good.state));
            // every single-byte flip in the segment is caught
            for i in (base.len()..one.len()).step_by(5) {
                let mut c = one.clone();
                c[i] ^= 0x10;
                let e = decode(&c, &plan, 7, key).unwrap_err();
                assert!(matches!(e, Error::KeyState { .. }), "{e:?}");
            }
            // truncated
            let m = decode(&one[..one.len() - 3], &plan, 7, key)
                .unwrap_err()
                .to_string();
            assert!(m.contains("truncated"), "{m}");
            // a segment of a newer format: refused naming the key
            let mut newer = one.clone();
            let at = base.len();
            newer[at + 4..at + 6].copy_from_slice(&(KEYSTATE_VERSION + 1).to_le_bytes());
            let m = decode(&newer, &plan, 7, key).unwrap_err().to_string();
            assert!(
                m.contains("newer rtml") && m.contains(&key_text(key)),
                "{m}"
            );
            // segments after a version 2 base are not read (version 2 has none)
            let mut v2 = one.clone();
            v2[4..6].copy_from_slice(&2u16.to_le_bytes());
            let m = decode(&v2, &plan, 7, key).unwrap_err().to_string();
            assert!(m.contains("truncated or extended"), "{m}");
        }
    }

    #[test]
    fn an_append_finding_another_length_rewrites_the_key() {
        let plan = full_plan();
        let eng = Engine::new(Arc::clone(&plan));
        eng.track_changes(true);
        let mut store = hashbrown::HashMap::new();
        feed(&eng, false, 0, 100);
        publish_into(&eng, false, &mut store);
        // the store loses every value (expired, deleted); appends then find other lengths
        store.clear();
        feed(&eng, false, 100, 20);
        let p = publish_into(&eng, false, &mut store);
        assert_eq!(p.deltas, p.values);
        for (k, v) in &store {
            assert!(decode_value(v, &plan, 7, k.as_ref()).unwrap().is_none());
        }
        // the next publish writes each of them whole, without further events
        assert_eq!(eng.changed_keys(), store.len());
        let p = publish_into(&eng, false, &mut store);
        assert_eq!((p.deltas, p.values), (0, store.len()));
        store_answers_like_engine(&eng, &plan, &store, &[0, 5, 60]);
    }

    #[test]
    fn older_versions_are_still_read() {
        // Values of versions 1 to 3 hold the key state of snapshot format 4 (a summary per
        // tile; version 1 also without the trailing string table, one varint byte 0): built
        // from today's state in that form, they decode to a state that answers like the engine,
        // bit for bit, and the same state as each other.
        let plan = full_plan();
        let eng = Engine::new(Arc::clone(&plan));
        eng.track_changes(true);
        feed(&eng, false, 0, 300);
        let wm = eng.watermark();
        let n = plan.n_features();
        for (k, v) in published(&eng, true) {
            assert_eq!(u16::from_le_bytes([v[4], v[5]]), KEYSTATE_VERSION);
            let d = decode(&v, &plan, 7, k.as_ref()).unwrap();
            let old = d.state.with_summary_tiles(&plan).to_v4();
            let h = Header {
                zone: 2,
                spec_id: 7,
                watermark: d.header.watermark,
                settle_point: d.header.settle_point,
            };
            let mut v3 = Vec::new();
            options().serialize_into(&mut v3, &(&k, &old)).unwrap();
            let payload = v3.clone();
            let value = |version: u16, payload: &[u8]| {
                let mut out = Vec::new();
                out.extend_from_slice(MAGIC);
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&[h.zone, 0]);
                out.extend_from_slice(&h.spec_id.to_le_bytes());
                out.extend_from_slice(&h.watermark.to_le_bytes());
                out.extend_from_slice(&h.settle_point.to_le_bytes());
                out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
                out.extend_from_slice(payload);
                out
            };
            assert_eq!(payload.last(), Some(&0u8), "an empty string table");
            let states: Vec<KeyState> = [
                value(3, &payload),
                value(2, &payload),
                value(1, &payload[..payload.len() - 1]),
            ]
            .iter()
            .map(|v| decode(v, &plan, 7, k.as_ref()).unwrap().state)
            .collect();
            for st in &states {
                assert_eq!(format!("{st:?}"), format!("{:?}", states[0]));
                for dt in [-10 * M, 0, M, 37 * M, 3 * 60 * M] {
                    let (mut got, mut want) = (vec![0.0; n], vec![0.0; n]);
                    answer(&plan, Some(st), wm + dt, &mut got, None).unwrap();
                    eng.get(k.as_ref(), wm + dt, &mut want).unwrap();
                    assert_eq!(bits(&got), bits(&want), "{k:?} at {dt}");
                }
            }
            // a version 2 payload is not read as version 1 (a trailing byte), nor as version 4
            assert!(decode(&value(1, &payload), &plan, 7, k.as_ref()).is_err());
            assert!(decode(&value(4, &payload), &plan, 7, k.as_ref()).is_err());
        }
    }

    #[test]
    fn values_decode_and_answer_like_the_engine() {
        for str_keys in [false, true] {
            let plan = full_plan();
            let eng = Engine::new(Arc::clone(&plan));
            eng.track_changes(true);
            feed(&eng, str_keys, 0, 400);
            let values = published(&eng, false);
            assert_eq!(values.len(), 5, "every key changed once at least");
            let wm = eng.watermark();
            let n = plan.n_features();
            for (k, v) in &values {
                let d = decode(v, &plan, 7, k.as_ref()).unwrap();
                assert_eq!(d.header.watermark, wm);
                assert_eq!(d.header.settle_point, eng.settle_point());
                assert_eq!(d.header.zone, 2);
                // the very bytes a snapshot holds for this key, after the header
                let snap_bytes = options().serialize(&(k, &d.state)).unwrap();
                assert_eq!(&v[HEADER..], &snap_bytes[..]);
                for dt in [-10 * M, -M, 0, 1, M, 37 * M, 3 * 60 * M] {
                    let t = wm + dt;
                    let (mut got, mut want) = (vec![0.0; n], vec![0.0; n]);
                    let a = answer(&plan, Some(&d.state), t, &mut got, None);
                    let b = eng.get(k.as_ref(), t, &mut want);
                    match (a, b) {
                        (Ok(()), Ok(())) => assert_eq!(bits(&got), bits(&want), "{k:?} at {dt}"),
                        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                        (a, b) => panic!("{k:?} at {dt}: remote {a:?}, engine {b:?}"),
                    }
                }
            }
            // an unknown key answers like the engine
            let (mut got, mut want) = (vec![0.0; n], vec![0.0; n]);
            let unknown = if str_keys {
                KeyRef::Str("nobody")
            } else {
                KeyRef::Int(99)
            };
            answer(&plan, None, wm, &mut got, None).unwrap();
            eng.get(unknown, wm, &mut want).unwrap();
            assert_eq!(bits(&got), bits(&want));
        }
    }

    #[test]
    fn changed_set_lists_changed_keys_and_is_cleared_by_a_publish() {
        let plan = plan(r#"{"agg": "count", "window": "1h"}"#);
        let eng = Engine::new(Arc::clone(&plan));
        // before tracking: nothing listed
        eng.ingest_one(KeyRef::Int(1), M, &[], None).unwrap();
        assert!(!eng.tracks_changes());
        assert!(published(&eng, false).is_empty());
        // starting counts every held key once
        eng.track_changes(true);
        assert_eq!(eng.changed_keys(), 1);
        assert_eq!(published(&eng, false).len(), 1);
        assert_eq!(eng.changed_keys(), 0);
        assert!(published(&eng, false).is_empty());
        eng.ingest_one(KeyRef::Int(2), 2 * M, &[], None).unwrap();
        eng.ingest_one(KeyRef::Int(2), 3 * M, &[], None).unwrap();
        eng.ingest_one(KeyRef::Int(3), 3 * M, &[], None).unwrap();
        let mut keys: Vec<Key> = published(&eng, false).into_iter().map(|p| p.0).collect();
        keys.sort_by_key(|k| format!("{k:?}"));
        assert_eq!(keys, vec![Key::Int(2), Key::Int(3)]);
        // a late event changes nothing
        eng.ingest_one(KeyRef::Int(4), -100 * M, &[], None).unwrap();
        assert!(published(&eng, false).is_empty());
        // all: every key, whatever changed
        assert_eq!(published(&eng, true).len(), 3);
        eng.track_changes(false);
        eng.ingest_one(KeyRef::Int(5), 4 * M, &[], None).unwrap();
        assert!(published(&eng, false).is_empty());
    }

    #[test]
    fn bad_values_are_typed_errors_naming_the_key() {
        let plan = full_plan();
        let eng = Engine::new(Arc::clone(&plan));
        eng.track_changes(true);
        feed(&eng, false, 0, 200);
        let values = published(&eng, false);
        let (k, v) = &values[0];
        let key = k.as_ref();
        let err = |bytes: &[u8], plan: &Plan, id: u64, key: KeyRef<'_>| {
            let e = decode(bytes, plan, id, key).unwrap_err();
            assert!(matches!(e, Error::KeyState { .. }), "{e:?}");
            e.to_string()
        };
        let name = key_text(key);
        // another feature set (spec id)
        let m = err(v, &plan, 8, key);
        assert!(
            m.contains(&name) && m.contains("another feature set"),
            "{m}"
        );
        // corrupted: every single-byte flip in the payload is caught
        for i in (HEADER..v.len()).step_by(7) {
            let mut c = v.clone();
            c[i] ^= 0x20;
            let m = err(&c, &plan, 7, key);
            assert!(m.contains("checksum"), "{m}");
        }
        // truncated, empty, foreign bytes
        assert!(err(&v[..v.len() - 1], &plan, 7, key).contains("truncated"));
        assert!(err(b"", &plan, 7, key).contains("not an rtml key state"));
        assert!(err(
            b"{\"json\": 1} and more bytes than forty, surely",
            &plan,
            7,
            key
        )
        .contains("not an rtml key state"));
        // a newer format
        let mut newer = v.clone();
        newer[4..6].copy_from_slice(&(KEYSTATE_VERSION + 1).to_le_bytes());
        assert!(err(&newer, &plan, 7, key).contains("newer rtml"));
        // the value of another key stored under this one
        let other = KeyRef::Int(12345);
        let m = err(v, &plan, 7, other);
        assert!(
            m.contains("12345") && m.contains("holds the state of key"),
            "{m}"
        );
        // a state of another shape (a plan with other features, same spec id claimed)
        let small = plan_small();
        let m = err(v, &small, 7, key);
        assert!(
            m.contains("does not match") || m.contains("cannot decode"),
            "{m}"
        );
        // random garbage with a valid header and checksum never panics
        let mut r: u64 = 1;
        for len in [0usize, 1, 5, 40, 200] {
            let mut payload = Vec::new();
            for _ in 0..len {
                r ^= r << 13;
                r ^= r >> 7;
                r ^= r << 17;
                payload.push(r as u8);
            }
            let mut forged = v[..HEADER].to_vec();
            forged[32..36].copy_from_slice(&(payload.len() as u32).to_le_bytes());
            forged[36..40].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            forged.extend_from_slice(&payload);
            let _ = err(&forged, &plan, 7, key);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]

        /// Whatever the stream and whenever the publishes happen, every published value
        /// answers like the engine at every instant (errors included), and the values of the
        /// last publish of each key are the state the engine holds.
        #[test]
        fn published_values_answer_like_the_engine(
            seed in 0i64..10_000,
            n in 1i64..300,
            cut in 1i64..300,
            str_keys in proptest::prelude::any::<bool>(),
            offsets in proptest::collection::vec(-120i64..240, 1..12),
        ) {
            let plan = full_plan();
            let eng = Engine::new(Arc::clone(&plan));
            eng.track_changes(true);
            let mut latest: hashbrown::HashMap<Key, Vec<u8>> = hashbrown::HashMap::new();
            // the same stream published with delta segments at the same cuts
            let twin = Engine::new(Arc::clone(&plan));
            twin.track_changes(true);
            let mut store = hashbrown::HashMap::new();
            let mut from = seed;
            let mut left = n;
            while left > 0 {
                let step = cut.min(left);
                feed(&eng, str_keys, from, step);
                feed(&twin, str_keys, from, step);
                for (k, v) in published(&eng, false) {
                    latest.insert(k, v);
                }
                publish_into(&twin, false, &mut store);
                from += step;
                left -= step;
            }
            // base + deltas decode to states answering exactly like one whole publish
            proptest::prop_assert_eq!(store.len(), latest.len());
            for (k, v) in &store {
                let a = decode(v, &plan, 7, k.as_ref()).unwrap();
                let b = decode(&latest[k], &plan, 7, k.as_ref()).unwrap();
                proptest::prop_assert_eq!(a.header, b.header);
                for &m in &offsets {
                    let t = eng.watermark().saturating_add(m * M);
                    let nf = plan.n_features();
                    let (mut x, mut y) = (vec![0.0; nf], vec![0.0; nf]);
                    let r = (
                        answer(&plan, Some(&a.state), t, &mut x, None),
                        answer(&plan, Some(&b.state), t, &mut y, None),
                    );
                    match r {
                        (Ok(()), Ok(())) => proptest::prop_assert_eq!(bits(&x), bits(&y)),
                        (Err(p), Err(q)) => proptest::prop_assert_eq!(p.to_string(), q.to_string()),
                        (p, q) => proptest::prop_assert!(false, "{:?} at {}: {:?} vs {:?}", k, m, p, q),
                    }
                }
            }
            let wm = eng.watermark();
            let nf = plan.n_features();
            for (k, v) in &latest {
                let d = decode(v, &plan, 7, k.as_ref()).unwrap();
                for &m in &offsets {
                    let t = wm.saturating_add(m * M);
                    let (mut got, mut want) = (vec![0.0; nf], vec![0.0; nf]);
                    let a = answer(&plan, Some(&d.state), t, &mut got, None);
                    let b = eng.get(k.as_ref(), t, &mut want);
                    match (a, b) {
                        (Ok(()), Ok(())) => proptest::prop_assert_eq!(bits(&got), bits(&want)),
                        (Err(a), Err(b)) => proptest::prop_assert_eq!(a.to_string(), b.to_string()),
                        (a, b) => proptest::prop_assert!(false, "{:?} at {}: {:?} vs {:?}", k, m, a, b),
                    }
                }
            }
        }
    }

    /// The feature set of the tiled-state fixtures: every aggregation a tiled window takes, over
    /// two tilings, next to a sliding and a lifetime feature.
    const TILES_FIXTURE_FEATURES: &str = r#"{"agg": "count", "window": "1h", "hop": "15m"},
        {"agg": "count", "column": "v", "window": "1h", "hop": "15m"},
        {"agg": "sum", "column": "v", "window": "1h", "hop": "15m"},
        {"agg": "mean", "column": "v", "window": "1h", "hop": "15m"},
        {"agg": "var", "column": "v", "window": "1h", "hop": "15m"},
        {"agg": "min", "column": "v", "window": "1h", "hop": "15m"},
        {"agg": "max", "column": "v", "window": "1h", "hop": "15m"},
        {"agg": "first", "column": "v", "window": "1h", "hop": "15m"},
        {"agg": "last", "column": "v", "window": "1h", "hop": "15m"},
        {"agg": "time_since_last", "window": "1h", "hop": "15m"},
        {"agg": "distinct_count", "column": "v", "window": "1h", "hop": "15m"},
        {"agg": "quantile", "column": "v", "q": 0.5, "window": "1h", "hop": "15m"},
        {"agg": "decayed_sum", "column": "v", "half_life": "10m", "window": "1h", "hop": "15m"},
        {"agg": "sum", "column": "v", "window": "3h", "hop": "30m"},
        {"agg": "min", "column": "v", "window": "3h", "hop": "30m"},
        {"agg": "count", "window": "3h", "hop": "30m"},
        {"agg": "sum", "column": "v", "window": "1h"},
        {"agg": "last", "column": "v"}"#;

    /// Offsets (minutes) from a value's watermark at which the fixtures record answers.
    const TILES_FIXTURE_OFFSETS: [i64; 7] = [0, 1, 5, 20, 50, 125, 300];

    /// Events applied to a decoded fixture state after its watermark: (settled point, ts, v),
    /// a little out of order.
    fn tiles_fixture_after(wm: i64) -> Vec<(i64, i64, u64)> {
        let mut out = Vec::new();
        let mut top = wm;
        for i in 1..40i64 {
            let ts = wm + i * 7 * M - (i % 3) * 2 * M;
            top = top.max(ts);
            let v = if i % 9 == 0 {
                NULL
            } else {
                ((i * 37 % 101) as f64 / 4.0).to_bits()
            };
            out.push((top - 10 * M, ts, v));
        }
        out
    }

    fn tiles_fixture_answers(plan: &Plan, state: &KeyState, wm: i64) -> Vec<Vec<u64>> {
        TILES_FIXTURE_OFFSETS
            .iter()
            .map(|m| {
                let mut out = vec![0.0; plan.n_features()];
                answer(plan, Some(state), wm + m * M, &mut out, None).unwrap();
                bits(&out)
            })
            .collect()
    }

    fn fixture_path(version: u16) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/data/keystate_v{version}_tiles.json"))
    }

    /// Writes `tests/data/keystate_v<N>_tiles.json` (N: this build's format): published values
    /// of keys with tiled windows, and their answers before and after more events. Run once
    /// per format version (`cargo test --no-default-features --lib write_tiles_fixture --
    /// --ignored`) and commit the file; never regenerate an old version's file: it is what
    /// proves that old values still load.
    #[test]
    #[ignore]
    fn write_tiles_fixture() {
        let plan = plan(TILES_FIXTURE_FEATURES);
        let eng = Engine::new(Arc::clone(&plan));
        eng.track_changes(true);
        feed(&eng, false, 0, 700);
        let wm = eng.watermark();
        let mut values = Vec::new();
        for (k, v) in published(&eng, true) {
            let mut d = decode(&v, &plan, 7, k.as_ref()).unwrap();
            let before = tiles_fixture_answers(&plan, &d.state, wm);
            let after = tiles_fixture_after(wm);
            for &(settle, ts, x) in &after {
                d.state.apply_event(&plan, ts, &[x], settle);
            }
            let wm2 = after.iter().map(|e| e.1).max().unwrap();
            let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
            values.push(serde_json::json!({
                "key": match k { Key::Int(i) => i, _ => unreachable!() },
                "value": hex,
                "before": before,
                "after": tiles_fixture_answers(&plan, &d.state, wm2),
            }));
        }
        let doc = serde_json::json!({
            "version": KEYSTATE_VERSION,
            "features": TILES_FIXTURE_FEATURES,
            "watermark": wm,
            "values": values,
        });
        std::fs::write(
            fixture_path(KEYSTATE_VERSION),
            serde_json::to_string_pretty(&doc).unwrap() + "\n",
        )
        .unwrap();
    }

    #[test]
    fn tiles_fixtures_of_every_version_are_read() {
        // Published values written by each format version's rtml (its own tiles: summaries up
        // to version 3, compact from version 4) decode here, answer what that rtml answered,
        // and take more events answering what it answered after them too.
        let mut seen = 0;
        for version in 1..=KEYSTATE_VERSION {
            let Ok(text) = std::fs::read_to_string(fixture_path(version)) else {
                continue;
            };
            seen += 1;
            let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
            let plan = plan(doc["features"].as_str().unwrap());
            let wm = doc["watermark"].as_i64().unwrap();
            let want = |v: &serde_json::Value| -> Vec<Vec<u64>> {
                serde_json::from_value(v.clone()).unwrap()
            };
            for entry in doc["values"].as_array().unwrap() {
                let key = Key::Int(entry["key"].as_i64().unwrap());
                let hex = entry["value"].as_str().unwrap();
                let bytes: Vec<u8> = (0..hex.len() / 2)
                    .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                    .collect();
                assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), version);
                let mut d = decode(&bytes, &plan, 7, key.as_ref()).unwrap();
                assert_eq!(
                    tiles_fixture_answers(&plan, &d.state, wm),
                    want(&entry["before"]),
                    "version {version}, {key:?}"
                );
                let after = tiles_fixture_after(wm);
                for &(settle, ts, x) in &after {
                    d.state.apply_event(&plan, ts, &[x], settle);
                }
                let wm2 = after.iter().map(|e| e.1).max().unwrap();
                assert_eq!(
                    tiles_fixture_answers(&plan, &d.state, wm2),
                    want(&entry["after"]),
                    "version {version}, {key:?}, after more events"
                );
            }
        }
        assert!(seen >= 1, "the fixture of format 3 at least");
    }

    fn plan_small() -> Arc<Plan> {
        plan(r#"{"agg": "count", "window": "1h"}"#)
    }

    #[test]
    fn store_keys_carry_a_hash_tag() {
        let a = String::from_utf8(store_key("rtml:abc", KeyRef::Int(42))).unwrap();
        let b = String::from_utf8(store_key("rtml:abc", KeyRef::Str("u:42"))).unwrap();
        let tag = |s: &str| s[s.find('{').unwrap()..=s.find('}').unwrap()].to_string();
        assert!(a.starts_with("rtml:abc:{") && a.ends_with(":i:42"), "{a}");
        assert!(b.starts_with("rtml:abc:{") && b.ends_with(":s:u:42"), "{b}");
        assert_eq!(tag(&a), format!("{{{}}}", bucket_of(KeyRef::Int(42))));
        // keys spread over the buckets
        let buckets: hashbrown::HashSet<u64> =
            (0..10_000).map(|i| bucket_of(KeyRef::Int(i))).collect();
        assert_eq!(buckets.len() as u64, BUCKETS);
    }
}

//! One key's state as a self-describing value, for a store shared by many readers (Redis, see
//! docs/shared-state.md), and the engine's list of keys changed since the last publish.
//!
//! A value is a 40-byte header, then the key and its state in exactly the encoding an engine
//! snapshot uses for each of its keys (`snapshot.rs`: the same bincode options and the same
//! serde derivations of [`Key`] and [`KeyState`], so a snapshot and a published value of a key
//! hold the same bytes for it):
//!
//! ```text
//! offset 0   4 bytes  magic "RTKS"
//!        4   u16 LE   format version (2: the key state of snapshot format 4, with its strings;
//!                     1: of snapshot formats 2 and 3, still read)
//!        6   u8       clock of the writer's events: 0 unknown / epoch integers, 1 naive, 2 aware
//!        7   u8       0 (reserved)
//!        8   u64 LE   spec id: the first 8 bytes (big-endian) of the SHA-256 of the feature set's
//!                     JSON document
//!       16   i64 LE   the writing partition's watermark when the value was encoded
//!       24   i64 LE   its settled point (watermark - allowed_lateness)
//!       32   u32 LE   payload length P
//!       36   u32 LE   CRC-32 of the payload
//!       40   P bytes  payload: bincode of (key, key state)
//! ```
//!
//! A reader evaluates a query over a decoded state with [`answer`], the function the in-process
//! engine's `get` runs ([`super::Shard::get_masked`]), so both give the same bits.

use hashbrown::HashSet;
use parking_lot::RwLockWriteGuard;

use bincode::Options;

use super::snapshot::{fits_stream_at, options};
use super::{Engine, Shard};
use crate::error::{Error, Result};
use crate::input::{Key, KeyRef};
use crate::plan::Plan;
use crate::state::{KeyState, KeyStateV3};

pub const MAGIC: &[u8; 4] = b"RTKS";
/// Format version of a published key state (2: the per-key encoding of snapshot format 4, with
/// the key's strings; 1: of snapshot formats 2 and 3, read and upgraded).
pub const KEYSTATE_VERSION: u16 = 2;
/// Bytes before the payload.
pub const HEADER: usize = 40;
/// Number of hash-tag buckets of the store's key layout (see [`store_key`]).
pub const BUCKETS: u64 = 1024;

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

/// Append the value of `key`'s `state` to `buf`.
pub fn encode_into(buf: &mut Vec<u8>, h: &Header, key: &Key, state: &KeyState) -> Result<()> {
    let start = buf.len();
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&KEYSTATE_VERSION.to_le_bytes());
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

/// How a key is named in errors: `42` or `'abc'`.
pub fn key_text(key: KeyRef<'_>) -> String {
    match key {
        KeyRef::Int(i) => i.to_string(),
        KeyRef::Str(s) => format!("{s:?}"),
    }
}

/// Decode the value stored for `key` and check it against the reader's feature set (`plan`,
/// `spec_id`): any byte string gives a state this engine could have written, or
/// [`Error::KeyState`] naming the key, never a panic.
pub fn decode(bytes: &[u8], plan: &Plan, spec_id: u64, key: KeyRef<'_>) -> Result<Decoded> {
    let bad = |m: String| Error::KeyState {
        key: key_text(key),
        message: m,
    };
    if bytes.len() < HEADER || &bytes[..4] != MAGIC {
        return Err(bad(
            "not an rtml key state (bad magic bytes or value too short)".into(),
        ));
    }
    let word = |a: usize| -> [u8; 8] {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[a..a + 8]);
        w
    };
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version > KEYSTATE_VERSION {
        return Err(bad(format!(
            "format version {version} was written by a newer rtml (this one reads up to {KEYSTATE_VERSION})"
        )));
    }
    if version == 0 {
        return Err(bad("format version 0 does not exist".into()));
    }
    let header = Header {
        zone: bytes[6],
        spec_id: u64::from_le_bytes(word(8)),
        watermark: i64::from_le_bytes(word(16)),
        settle_point: i64::from_le_bytes(word(24)),
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
    let len = u32::from_le_bytes([bytes[32], bytes[33], bytes[34], bytes[35]]) as usize;
    let crc = u32::from_le_bytes([bytes[36], bytes[37], bytes[38], bytes[39]]);
    let payload = &bytes[HEADER..];
    if payload.len() != len {
        return Err(bad(format!(
            "truncated or extended: header says {len} payload bytes, value has {}",
            payload.len()
        )));
    }
    if crc32fast::hash(payload) != crc {
        return Err(bad("checksum mismatch: the value is corrupted".into()));
    }
    let (stored, state): (Key, KeyState) = if version >= 2 {
        options()
            .with_limit(len as u64)
            .deserialize(payload)
            .map_err(|e| bad(format!("cannot decode: {e}")))?
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
    if !state.consistent_with(plan)
        || !fits_stream_at(lateness, header.watermark, &state)
        || header.settle_point != header.watermark.saturating_sub(lateness)
    {
        return Err(bad("key state does not match the feature set".into()));
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
    let mut out = Vec::with_capacity(ns.len() + 32);
    out.extend_from_slice(ns.as_bytes());
    match key {
        KeyRef::Int(i) => out.extend_from_slice(format!(":{{{bucket}}}:i:{i}").as_bytes()),
        KeyRef::Str(s) => {
            out.extend_from_slice(format!(":{{{bucket}}}:s:").as_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

/// What one publish encoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// The partition's watermark and settled point written in every value (None before any
    /// event).
    pub watermark: Option<i64>,
    pub settle_point: Option<i64>,
    /// Keys with state in the engine.
    pub keys: usize,
    /// Values encoded.
    pub values: usize,
    /// Their total bytes.
    pub bytes: usize,
}

impl Shard {
    /// Remember that `key` changed (when tracking).
    #[inline]
    pub(super) fn note_changed(&mut self, key: KeyRef<'_>) {
        if let Some(c) = &mut self.changed {
            if !c.contains(&key) {
                c.insert(key.to_key());
            }
        }
    }
}

impl Engine {
    /// Start (or stop) remembering which keys change, for [`Engine::publish_changed`]. Starting
    /// counts every key held as changed (a first publish writes them all).
    pub fn track_changes(&self, on: bool) {
        for shard in self.shards.iter() {
            let mut s = shard.write();
            if !on {
                s.changed = None;
            } else if s.changed.is_none() {
                s.changed = Some(s.keys.keys().cloned().collect());
            }
        }
    }

    /// Whether changes are tracked.
    pub fn tracks_changes(&self) -> bool {
        self.shards[0].read().changed.is_some()
    }

    /// Number of keys changed since the last publish.
    pub fn changed_keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().changed.as_ref().map_or(0, HashSet::len))
            .sum()
    }

    /// Encode the value of every key changed since the last call (every key with `all`) and
    /// hand each to `emit(key, its state, value bytes)`; the changed set is cleared. A
    /// consistent cut: no ingest runs meanwhile (reads do; each shard is locked for writing
    /// only to take its set, then read while its values are encoded), so every value carries
    /// the watermark its state belongs to. Keys evicted since they changed are skipped (their
    /// stored value expires by the ttl).
    pub fn publish_changed(
        &self,
        all: bool,
        spec_id: u64,
        zone: u8,
        mut emit: impl FnMut(&Key, &KeyState, &[u8]),
    ) -> Result<Published> {
        let meta = self.ingest_lock();
        let mut out = Published {
            watermark: (meta.watermark != i64::MIN).then_some(meta.watermark),
            settle_point: (meta.watermark != i64::MIN).then(|| {
                meta.watermark
                    .saturating_sub(self.plan.spec.allowed_lateness)
            }),
            ..Published::default()
        };
        let header = Header {
            zone,
            spec_id,
            watermark: meta.watermark,
            settle_point: meta
                .watermark
                .saturating_sub(self.plan.spec.allowed_lateness),
        };
        let mut buf = Vec::new();
        let mut one = |key: &Key, state: &KeyState, out: &mut Published| -> Result<()> {
            buf.clear();
            encode_into(&mut buf, &header, key, state)?;
            out.values += 1;
            out.bytes += buf.len();
            emit(key, state, &buf);
            Ok(())
        };
        for shard in self.shards.iter() {
            let mut w = shard.write();
            let taken = w.changed.as_mut().map(std::mem::take);
            let s = RwLockWriteGuard::downgrade(w);
            out.keys += s.keys.len();
            if all {
                for (k, st) in s.keys.iter() {
                    one(k, st, &mut out)?;
                }
            } else if let Some(taken) = taken {
                for k in &taken {
                    if let Some(st) = s.keys.get(k) {
                        one(k, st, &mut out)?;
                    }
                }
            }
        }
        drop(meta);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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
        eng.publish_changed(all, 7, 2, |k, _, v| out.push((k.clone(), v.to_vec())))
            .unwrap();
        out
    }

    #[test]
    fn version_1_values_are_still_read() {
        // A value of version 1 (written before key states kept strings) is today's value without
        // the trailing empty string table (one varint byte 0): built from a version 2 value of
        // a plan without strings, it decodes to the same state.
        let plan = full_plan();
        let eng = Engine::new(Arc::clone(&plan));
        eng.track_changes(true);
        feed(&eng, false, 0, 300);
        for (k, v) in published(&eng, true) {
            assert_eq!(u16::from_le_bytes([v[4], v[5]]), 2);
            assert_eq!(v.last(), Some(&0u8), "an empty string table");
            let mut old = v[..v.len() - 1].to_vec();
            old[4..6].copy_from_slice(&1u16.to_le_bytes());
            let payload_len = (old.len() - HEADER) as u32;
            let crc = crc32fast::hash(&old[HEADER..]);
            old[32..36].copy_from_slice(&payload_len.to_le_bytes());
            old[36..40].copy_from_slice(&crc.to_le_bytes());
            let new = decode(&v, &plan, 7, k.as_ref()).unwrap();
            let was = decode(&old, &plan, 7, k.as_ref()).unwrap();
            assert_eq!(format!("{:?}", was.state), format!("{:?}", new.state));
            // version 2 bytes are not read as version 1 (a trailing byte), nor the reverse
            let mut v2_as_1 = v.clone();
            v2_as_1[4..6].copy_from_slice(&1u16.to_le_bytes());
            assert!(decode(&v2_as_1, &plan, 7, k.as_ref()).is_err());
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
            let mut from = seed;
            let mut left = n;
            while left > 0 {
                let step = cut.min(left);
                feed(&eng, str_keys, from, step);
                for (k, v) in published(&eng, false) {
                    latest.insert(k, v);
                }
                from += step;
                left -= step;
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
        let buckets: HashSet<u64> = (0..10_000).map(|i| bucket_of(KeyRef::Int(i))).collect();
        assert_eq!(buckets.len() as u64, BUCKETS);
    }
}

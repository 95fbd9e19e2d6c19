//! The engine's record of the keys changed since the last publish and of the events applied to
//! each since ([`Engine::track_changes`]), and the publish that hands each changed key to a
//! store as a whole value or a delta segment ([`Engine::publish_changed`]), in the value format
//! of [`super::keystate`].

use hashbrown::HashMap;
use parking_lot::RwLockWriteGuard;

use super::keystate::{encode_delta_into, encode_into, Header, Value, DELTA_HEADER};
use super::{Engine, Shard};
use crate::error::{Error, Result};
use crate::input::{Key, KeyRef};
use crate::plan::Plan;
use crate::state::KeyState;

/// Words a key's pending event log may hold before the key is marked for a full rewrite
/// instead (a writer that cannot publish must not grow without bound).
pub const LOG_CAP_WORDS: usize = 1 << 16;
/// A key's log keeps its allocation across publishes up to this many words.
const KEEP_LOG_WORDS: usize = 64;

/// What one publish encoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// The partition's watermark and settled point written in every value (None before any
    /// event).
    pub watermark: Option<i64>,
    pub settle_point: Option<i64>,
    /// Keys with state in the engine.
    pub keys: usize,
    /// Values encoded (whole values and delta segments).
    pub values: usize,
    /// Of those, delta segments.
    pub deltas: usize,
    /// Their total bytes.
    pub bytes: usize,
}

/// A tracked key: changed since the last publish or not, the events applied since, and what
/// the store holds.
#[derive(Clone, Debug, Default)]
pub(super) struct Track {
    /// Listed in [`Tracking::dirty`].
    dirty: bool,
    /// The next publish writes the whole value (a new key, an overflowing log, a store that
    /// lost the value, a plan with string columns).
    full: bool,
    /// Events applied since the last publish: `2 + columns` words each (settled point, time,
    /// column words).
    log: Vec<u64>,
    /// Bytes of the base and of the whole value the store holds (0: none).
    base: usize,
    len: usize,
}

/// The engine's change tracking (per shard, see [`Engine::track_changes`]).
#[derive(Clone, Debug, Default)]
pub(super) struct Tracking {
    keys: HashMap<Key, Track>,
    /// Keys changed since the last publish.
    dirty: Vec<Key>,
}

impl Shard {
    /// Remember that `key` changed (when tracking): the event `ts`, `vals` applied at the
    /// settled point `settle`; `created`: the key's state is new.
    #[inline]
    pub(super) fn note_changed(
        &mut self,
        key: KeyRef<'_>,
        created: bool,
        plan: &Plan,
        ts: i64,
        vals: &[u64],
        settle: i64,
    ) {
        let Some(c) = &mut self.changed else {
            return;
        };
        let t = c.keys.entry_ref(&key).or_default();
        if !t.dirty {
            t.dirty = true;
            c.dirty.push(key.to_key());
        }
        if created || plan.has_text_columns() {
            t.full = true;
        }
        if t.full {
            return;
        }
        if t.log.len() >= LOG_CAP_WORDS {
            t.full = true;
            t.log = Vec::new();
            return;
        }
        t.log.push(settle as u64);
        t.log.push(ts as u64);
        t.log.extend_from_slice(vals);
    }

    /// Forget the tracking of keys no longer held (after an eviction).
    pub(super) fn forget_evicted(&mut self) {
        let keys = &self.keys;
        if let Some(c) = &mut self.changed {
            c.keys.retain(|k, _| keys.contains_key(k));
            c.dirty.retain(|k| keys.contains_key(k));
        }
    }
}

impl Engine {
    /// Start (or stop) remembering which keys change and how, for [`Engine::publish_changed`].
    /// Starting counts every key held as changed, to be written whole (a first publish writes
    /// them all).
    pub fn track_changes(&self, on: bool) {
        for shard in self.shards.iter() {
            let mut s = shard.write();
            if !on {
                s.changed = None;
            } else if s.changed.is_none() {
                let mut c = Tracking::default();
                for k in s.keys.keys() {
                    c.keys.insert(
                        k.clone(),
                        Track {
                            dirty: true,
                            full: true,
                            ..Track::default()
                        },
                    );
                    c.dirty.push(k.clone());
                }
                s.changed = Some(c);
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
            .map(|s| s.read().changed.as_ref().map_or(0, |c| c.dirty.len()))
            .sum()
    }

    /// The store no longer holds what was written for these keys (an append found another
    /// length): the next publish writes each whole.
    pub fn mark_full(&self, keys: &[Key]) {
        for k in keys {
            let mut s = self.shard(k.as_ref()).write();
            let held = s.keys.contains_key(k);
            if let Some(c) = &mut s.changed {
                if let Some(t) = c.keys.get_mut(k) {
                    t.full = true;
                    t.log = Vec::new();
                    t.base = 0;
                    t.len = 0;
                    if !t.dirty && held {
                        t.dirty = true;
                        c.dirty.push(k.clone());
                    }
                }
            }
        }
    }

    /// Encode every key changed since the last call (every key with `all`) and hand each to
    /// `emit(key, its state, value)`, which returns whether the store keeps the value (false:
    /// it deleted the key instead, e.g. already expired; its next change is written whole); the
    /// changed set is cleared.
    ///
    /// With `deltas`, a key whose stored value the writer knows is sent as a delta segment
    /// (the events applied since its last publish, [`Value::Delta`]), unless the value's
    /// segments would then outgrow its base (then the whole value is written again:
    /// compaction); without, every value is whole. A consistent cut: no ingest runs meanwhile
    /// (reads do; each shard is locked for writing only to take its changes, then read while
    /// its values are encoded), so every value carries the watermark its state belongs to.
    /// Keys evicted since they changed are skipped (their stored value expires by the ttl).
    pub fn publish_changed(
        &self,
        all: bool,
        deltas: bool,
        spec_id: u64,
        zone: u8,
        mut emit: impl FnMut(&Key, &KeyState, Value<'_>) -> bool,
    ) -> Result<Published> {
        let meta = self.ingest_lock();
        let settle_point = meta
            .watermark
            .saturating_sub(self.plan.spec.allowed_lateness);
        let mut out = Published {
            watermark: (meta.watermark != i64::MIN).then_some(meta.watermark),
            settle_point: (meta.watermark != i64::MIN).then_some(settle_point),
            ..Published::default()
        };
        let header = Header {
            zone,
            spec_id,
            watermark: meta.watermark,
            settle_point,
        };
        let mut buf = Vec::new();
        let mut one = |key: &Key, state: &KeyState, t: &mut Track, out: &mut Published| {
            buf.clear();
            let delta_len = DELTA_HEADER + 8 * t.log.len();
            let whole = all
                || !deltas
                || t.full
                || t.len == 0
                || t.len.saturating_sub(t.base) + delta_len > t.base;
            if whole {
                encode_into(&mut buf, &header, key, state)?;
                t.base = buf.len();
                t.len = buf.len();
            } else {
                encode_delta_into(&mut buf, t.len, header.watermark, settle_point, &t.log);
                t.len += buf.len();
                out.deltas += 1;
            }
            out.values += 1;
            out.bytes += buf.len();
            let value = if whole {
                Value::Full(&buf)
            } else {
                Value::Delta {
                    bytes: &buf,
                    len: t.len,
                }
            };
            if !emit(key, state, value) {
                t.base = 0;
                t.len = 0;
            }
            t.full = false;
            t.dirty = false;
            // a quiet key keeps a small log's allocation; a burst's is given back
            if t.log.capacity() > KEEP_LOG_WORDS {
                t.log = Vec::new();
            } else {
                t.log.clear();
            }
            Ok::<(), Error>(())
        };
        for shard in self.shards.iter() {
            let mut w = shard.write();
            let tracking = w.changed.take();
            let on = tracking.is_some();
            let s = RwLockWriteGuard::downgrade(w);
            out.keys += s.keys.len();
            let mut tracking = tracking.unwrap_or_default();
            let dirty = std::mem::take(&mut tracking.dirty);
            let mut failed = None;
            if all {
                for (k, st) in s.keys.iter() {
                    let t = tracking.keys.entry_ref(&k.as_ref()).or_default();
                    if let Err(e) = one(k, st, t, &mut out) {
                        failed = Some(e);
                        break;
                    }
                }
                // keys changed and evicted meanwhile
                tracking.keys.retain(|k, _| s.keys.contains_key(k));
            } else {
                for k in &dirty {
                    match (s.keys.get(k), tracking.keys.get_mut(k)) {
                        (Some(st), Some(t)) => {
                            if let Err(e) = one(k, st, t, &mut out) {
                                failed = Some(e);
                                break;
                            }
                        }
                        _ => {
                            tracking.keys.remove(k);
                        }
                    }
                }
            }
            drop(s);
            if on {
                shard.write().changed = Some(tracking);
            }
            if let Some(e) = failed {
                drop(meta);
                return Err(e);
            }
        }
        drop(meta);
        Ok(out)
    }
}

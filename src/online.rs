//! The online engine: per-key state fed by a live, possibly out-of-order event stream.
//!
//! Arrival rules: the watermark is the largest event time seen; an event older than
//! `watermark - allowed_lateness` is late and dropped (counted); every other event is applied
//! exactly as if it had arrived in order, because each key settles only up to
//! `watermark - allowed_lateness` and an accepted event is never older than that.
//!
//! Concurrency: keys live in [`SHARDS`] shards, each behind its own reader-writer lock. An
//! ingest (serialized with other ingests by one mutex) first decides, in row order, which events
//! are late and the settled point each one arrives at, then applies each shard's events under
//! that shard's write lock only (in parallel for large batches). A reader locks only the shard
//! of its key, so it waits at most for one shard's share of a batch, never for a whole ingest;
//! and since all of one key's events of a batch are applied under one lock hold, every answer
//! reflects a whole number of batches for that key.

use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::Arc;

use hashbrown::HashMap;
use parking_lot::{Mutex, MutexGuard, RwLock};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::error::{Error, Result};
use crate::input::{Events, Key, KeyRef};
use crate::plan::Plan;
use crate::spec::Spec;
use crate::state::KeyState;

/// A read settles a key first (under the write lock) only when that saves walking more rows.
pub const SETTLE_ON_READ_ROWS: u64 = 64;

/// Counters reported by [`Engine::stats`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub events_ingested: u64,
    pub late_events_dropped: u64,
    pub keys_evicted: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    pub keys: usize,
    pub counters: Counters,
    pub state_bytes: usize,
    /// Largest event time seen, ns (None before the first event).
    pub watermark: Option<i64>,
}

/// Result of one ingest call.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Ingested {
    pub accepted: u64,
    pub late: u64,
}

/// Number of key shards (a power of two).
pub const SHARDS: usize = 64;

/// Batches at most this large are applied event by event (no partitioning by shard).
const SMALL_INGEST_EVENTS: usize = 32;

/// Batches at least this large are applied shard by shard in parallel.
const PARALLEL_INGEST_EVENTS: usize = 16_384;

/// The shard of a key: a hash independent of the shard maps' own hasher.
#[inline]
pub fn shard_of(key: KeyRef<'_>) -> usize {
    let h = match key {
        KeyRef::Int(i) => {
            // splitmix64 finalizer
            let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        KeyRef::Str(s) => xxhash_rust::xxh3::xxh3_64(s.as_bytes()),
    };
    (h >> 58) as usize & (SHARDS - 1)
}

/// One shard of the key space.
#[derive(Default)]
pub struct Shard {
    pub(crate) keys: HashMap<Key, KeyState>,
}

impl Shard {
    /// Features of `key` at `t` (NaN = null) into `out`; the empty-history values for an unknown
    /// key.
    pub fn get(&self, plan: &Plan, key: KeyRef<'_>, t: i64, out: &mut [f64]) -> Result<()> {
        match self.keys.get(&key) {
            Some(state) => state.query(plan, t, out),
            None => {
                out.copy_from_slice(&plan.empty);
                Ok(())
            }
        }
    }

    /// Whether reading `key` at `t` would walk more than [`SETTLE_ON_READ_ROWS`] rows that
    /// settling it to `s` first would save.
    pub fn would_settle(&self, plan: &Plan, key: KeyRef<'_>, s: i64) -> bool {
        self.keys.get(&key).is_some_and(|st| {
            st.settled < s
                && st.settle_backlog(plan, s, plan.spec.allowed_lateness) > SETTLE_ON_READ_ROWS
        })
    }

    /// Settle one key to `s` (bookkeeping only: no answer changes).
    pub fn settle_key(&mut self, plan: &Plan, key: KeyRef<'_>, s: i64) {
        if let Some(state) = self.keys.get_mut(&key) {
            state.settle(plan, s, plan.spec.allowed_lateness);
        }
    }

    fn bytes(&self) -> usize {
        let table = self.keys.capacity()
            * (std::mem::size_of::<Key>() + std::mem::size_of::<KeyState>() + 1);
        let keys: usize = self
            .keys
            .iter()
            .map(|(k, s)| {
                s.bytes() - std::mem::size_of::<KeyState>()
                    + match k {
                        Key::Str(s) => s.len(),
                        Key::Int(_) => 0,
                    }
            })
            .sum();
        table + keys
    }
}

/// What one ingest at a time owns: the stream position and counters.
#[derive(Clone, Debug)]
pub struct Meta {
    pub(crate) key_is_int: Option<bool>,
    pub(crate) watermark: i64,
    pub(crate) counters: Counters,
    pub(crate) last_sweep: i64,
}

pub struct Engine {
    pub plan: Arc<Plan>,
    pub(crate) shards: Box<[RwLock<Shard>]>,
    /// Held for a whole ingest (and a snapshot): ingests apply one at a time, in call order.
    pub(crate) meta: Mutex<Meta>,
    /// Published copy of the watermark for readers (i64::MIN before the first event).
    watermark: AtomicI64,
    /// Published key kind: 0 none yet, 1 integers, 2 strings.
    kind: AtomicU8,
}

impl Engine {
    pub fn new(plan: Arc<Plan>) -> Engine {
        Engine {
            plan,
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
            meta: Mutex::new(Meta {
                key_is_int: None,
                watermark: i64::MIN,
                counters: Counters::default(),
                last_sweep: i64::MIN,
            }),
            watermark: AtomicI64::new(i64::MIN),
            kind: AtomicU8::new(0),
        }
    }

    /// Make `meta`'s watermark and key kind visible to readers.
    pub(crate) fn publish(&self, meta: &Meta) {
        self.watermark.store(meta.watermark, Ordering::Release);
        let kind = match meta.key_is_int {
            None => 0,
            Some(true) => 1,
            Some(false) => 2,
        };
        self.kind.store(kind, Ordering::Release);
    }

    pub fn spec(&self) -> &Spec {
        &self.plan.spec
    }

    /// The shard lock of a key.
    #[inline]
    pub fn shard(&self, key: KeyRef<'_>) -> &RwLock<Shard> {
        &self.shards[shard_of(key)]
    }

    /// The largest event time seen (i64::MIN before the first event).
    pub fn watermark(&self) -> i64 {
        self.watermark.load(Ordering::Acquire)
    }

    /// The earliest instant every key can still be queried at.
    pub fn settle_point(&self) -> i64 {
        self.watermark()
            .saturating_sub(self.plan.spec.allowed_lateness)
    }

    /// The ingest lock, for callers that must not block on it (see `try_ingest_lock`).
    pub fn ingest_lock(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock()
    }

    pub fn try_ingest_lock(&self) -> Option<MutexGuard<'_, Meta>> {
        self.meta.try_lock()
    }

    /// Check that a key kind matches what this engine holds.
    pub fn check_key_kind(&self, is_int: bool) -> Result<()> {
        let held = match self.kind.load(Ordering::Acquire) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        };
        self.check_kind(held, is_int)
    }

    fn check_kind(&self, held: Option<bool>, is_int: bool) -> Result<()> {
        match held {
            Some(k) if k != is_int => {
                let kind = |int: bool| if int { "integer" } else { "string" };
                Err(Error::schema(
                    &self.plan.spec.entity,
                    format!(
                        "this engine holds {} keys, got {} keys",
                        kind(k),
                        kind(is_int)
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Apply validated events in row (arrival) order. Fails only on a key-kind mismatch,
    /// before changing anything.
    pub fn ingest(&self, events: &Events<'_>) -> Result<Ingested> {
        let mut meta = self.meta.lock();
        self.ingest_locked(&mut meta, events)
    }

    /// [`Engine::ingest`] with the ingest lock already held.
    pub fn ingest_locked(&self, meta: &mut Meta, events: &Events<'_>) -> Result<Ingested> {
        let Some(is_int) = events.key_is_int() else {
            return Ok(Ingested::default());
        };
        self.check_kind(meta.key_is_int, is_int)?;
        meta.key_is_int = Some(is_int);
        let plan = &*self.plan;
        let lateness = plan.spec.allowed_lateness;
        let mut report = Ingested::default();
        // Settling is bookkeeping (no answer depends on it): in steps of lateness / 8.
        let step = lateness / 8;
        let apply_one = |shard: &mut Shard, vals: &mut [u64], i: usize, key: KeyRef<'_>, settle| {
            let ts = events.ts[i];
            let state = shard
                .keys
                .entry_ref(&key)
                .or_insert_with(|| KeyState::new(plan, settle));
            if settle.saturating_sub(state.settled) > step {
                state.settle(plan, settle, lateness);
            }
            for (c, v) in vals.iter_mut().enumerate() {
                *v = events.values[c][i];
            }
            state.insert(plan, ts, vals);
        };
        let mut vals: SmallVec<[u64; 8]> = SmallVec::from_elem(0, plan.columns.len());
        if events.len() <= SMALL_INGEST_EVENTS {
            // A few events (row dicts): partitioned on the stack. Each shard's events are
            // applied in row order under one lock hold, so a reader sees all of a key's events
            // of this batch or none.
            let mut watermark = meta.watermark;
            let mut todo: SmallVec<[(usize, usize, KeyRef<'_>, i64); SMALL_INGEST_EVENTS]> =
                SmallVec::new();
            events.for_each_key(|i, key| {
                let ts = events.ts[i];
                if ts < watermark.saturating_sub(lateness) {
                    report.late += 1;
                    return;
                }
                watermark = watermark.max(ts);
                todo.push((shard_of(key), i, key, watermark.saturating_sub(lateness)));
                report.accepted += 1;
            });
            todo.sort_by_key(|e| (e.0, e.1));
            for run in todo.chunk_by(|a, b| a.0 == b.0) {
                let mut shard = self.shards[run[0].0].write();
                for &(_, i, key, settle) in run {
                    apply_one(&mut shard, &mut vals, i, key, settle);
                }
            }
            meta.watermark = watermark;
            return Ok(self.finish_ingest(meta, report));
        }
        // Pass 1, in row order: which events are late, and the settled point each one
        // arrives at (the running watermark - lateness); each accepted event to its shard.
        let n = events.len();
        let mut watermark = meta.watermark;
        let mut settle_at: Vec<i64> = Vec::with_capacity(n);
        let mut by_shard: Vec<Vec<(u32, KeyRef<'_>)>> = vec![Vec::new(); SHARDS];
        events.for_each_key(|i, key| {
            let ts = events.ts[i];
            if ts < watermark.saturating_sub(lateness) {
                report.late += 1;
                settle_at.push(i64::MIN);
                return;
            }
            watermark = watermark.max(ts);
            settle_at.push(watermark.saturating_sub(lateness));
            by_shard[shard_of(key)].push((i as u32, key));
            report.accepted += 1;
        });
        // Pass 2: each shard's events in row order under that shard's lock.
        let apply = |(shard, evs): (&RwLock<Shard>, &Vec<(u32, KeyRef<'_>)>)| {
            if evs.is_empty() {
                return;
            }
            let mut shard = shard.write();
            let mut vals = vals.clone();
            for &(i, key) in evs {
                let i = i as usize;
                apply_one(&mut shard, &mut vals, i, key, settle_at[i]);
            }
        };
        if report.accepted as usize >= PARALLEL_INGEST_EVENTS {
            crate::pool::install(|| {
                self.shards
                    .par_iter()
                    .zip(by_shard.par_iter())
                    .for_each(apply)
            });
        } else {
            self.shards.iter().zip(by_shard.iter()).for_each(apply);
        }
        meta.watermark = watermark;
        Ok(self.finish_ingest(meta, report))
    }

    fn finish_ingest(&self, meta: &mut Meta, report: Ingested) -> Ingested {
        self.publish(meta);
        meta.counters.events_ingested += report.accepted;
        meta.counters.late_events_dropped += report.late;
        self.maybe_sweep(meta);
        report
    }

    /// Evict keys idle for longer than the TTL (amortized: at most every ttl/4 of event time).
    fn maybe_sweep(&self, meta: &mut Meta) {
        let Some(ttl) = self.plan.spec.ttl else {
            return;
        };
        if meta.watermark == i64::MIN {
            return;
        }
        if meta.last_sweep != i64::MIN && meta.watermark < meta.last_sweep.saturating_add(ttl / 4) {
            return;
        }
        self.evict_locked(meta);
    }

    /// Evict every key whose latest event is older than `watermark - ttl`. Returns how many.
    pub fn evict_idle(&self) -> usize {
        let mut meta = self.meta.lock();
        self.evict_locked(&mut meta)
    }

    fn evict_locked(&self, meta: &mut Meta) -> usize {
        let Some(ttl) = self.plan.spec.ttl else {
            return 0;
        };
        let cutoff = meta.watermark.saturating_sub(ttl);
        let mut evicted = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.write();
            let before = shard.keys.len();
            shard.keys.retain(|_, s| s.last_ts >= cutoff);
            evicted += before - shard.keys.len();
        }
        meta.counters.keys_evicted += evicted as u64;
        meta.last_sweep = meta.watermark;
        evicted
    }

    /// Features of `key` at instant `t` (NaN = null) into `out`.
    pub fn get(&self, key: KeyRef<'_>, t: i64, out: &mut [f64]) -> Result<()> {
        self.check_key_kind(key.is_int())?;
        if self.would_settle(key, t) {
            self.settle_key(key, t);
        }
        self.shard(key).read().get(&self.plan, key, t, out)
    }

    /// Whether a query of `key` at `t` would walk so many rows of a lagging settled point
    /// (more than [`SETTLE_ON_READ_ROWS`]) that settling the key first with
    /// [`Engine::settle_key`] pays off (for this query and later ones). Usually false: the
    /// ingest path keeps keys settled, and reads then stay read-only.
    pub fn would_settle(&self, key: KeyRef<'_>, t: i64) -> bool {
        let s = t.min(self.settle_point());
        self.shard(key).read().would_settle(&self.plan, key, s)
    }

    /// Settle one key up to `min(t, watermark - allowed_lateness)`. Pure bookkeeping: no answer
    /// that the engine promises changes.
    pub fn settle_key(&self, key: KeyRef<'_>, t: i64) {
        let s = t.min(self.settle_point());
        self.shard(key).write().settle_key(&self.plan, key, s);
    }

    pub fn stats(&self) -> Stats {
        let meta = self.meta.lock().clone();
        let (mut keys, mut state_bytes) = (0, 0);
        for shard in self.shards.iter() {
            let shard = shard.read();
            keys += shard.keys.len();
            state_bytes += shard.bytes();
        }
        Stats {
            keys,
            counters: meta.counters,
            state_bytes,
            watermark: (meta.watermark != i64::MIN).then_some(meta.watermark),
        }
    }

    /// Approximate bytes of online state: per-key state plus the hash tables.
    pub fn state_bytes(&self) -> usize {
        self.shards.iter().map(|s| s.read().bytes()).sum()
    }

    pub fn snapshot(&self, path: &Path) -> Result<()> {
        crate::snapshot::write(self, path)
    }

    pub fn restore(path: &Path) -> Result<Engine> {
        crate::snapshot::read(path)
    }
}

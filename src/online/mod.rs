//! The online engine: per-key state fed by a live, possibly out-of-order event stream.
//!
//! Arrival rules: the watermark is the largest event time seen; a batch (one ingest call) is
//! one arrival, applied in time order (ties by value) whatever its row order; an event older
//! than `watermark - allowed_lateness` (the watermark before its batch) is late and dropped
//! (counted); every other event is applied exactly as if it had arrived in order, because each
//! key settles only up to `watermark - allowed_lateness` and an accepted event is never older
//! than that. The guard (`guard.rs`) also rejects an event too far ahead of the
//! watermark (`max_ahead`) and drops one whose id was applied before (`dedupe_on`).
//!
//! Snapshots (`snapshot.rs`, with the format-1 state it upgrades) read the engine's private
//! fields as a child module: nothing outside `online` reaches into them.
//!
//! Concurrency: keys live in [`SHARDS`] shards, each behind its own reader-writer lock. An
//! ingest (serialized with other ingests by one mutex) first decides, in time order, which
//! events are late and the settled point each one arrives at, then applies each shard's events under
//! that shard's write lock only (in parallel for large batches). A reader locks only the shard
//! of its key, so it waits at most for one shard's share of a batch, never for a whole ingest;
//! and since all of one key's events of a batch are applied under one lock hold, every answer
//! reflects a whole number of batches for that key.

use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use hashbrown::HashMap;
use parking_lot::{Mutex, MutexGuard, RwLock, RwLockWriteGuard};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::error::{Error, Result};
use crate::input::{EventId, Events, Key, KeyRef};
use crate::plan::Plan;
use crate::spec::Spec;
use crate::state::KeyState;
use crate::text::Texts;

pub mod guard;
pub mod keystate;
pub mod publish;
pub mod snapshot;

pub use guard::{Guard, Rules, Verdict, AHEAD_CONFIRM};

/// [`Engine::would_settle`]: settling a key pays off when it saves walking more rows than
/// this. Reads never settle (that would take away the answers at the instants between the
/// key's settled point and the settle point: see [`Read`]); only [`Engine::settle_key`] does.
pub const SETTLE_ON_READ_ROWS: u64 = 64;

/// A read whose key has at least this many rows to fold out of its eager accumulators
/// (rows that left its windows since it last settled) folds them out first when its shard's
/// write lock is free at once ([`KeyState::advance_eager`]: the settled point stays, so every
/// instant answerable before still is): the key's later reads then walk no fold-outs. A key
/// whose settled point lags the stream (no recent event) otherwise redoes the same
/// corrections on every read: the slowest `get` calls (docs/benchmarks.md, "Session 10: get").
pub const ADVANCE_ON_READ_ROWS: u64 = 1;

/// What [`Shard::get_unless_advance`] did.
///
/// A read never settles its key: settling to `s` makes the key refuse every instant before
/// `s`, so a read at `t` would take away the answers at the instants between the key's
/// settled point and `s` that the same engine, unread, gives (and backfill, and a remote
/// reader replaying the published events). Session 12 removed the settle that a read did
/// past [`SETTLE_ON_READ_ROWS`] rows of backlog for exactly that (`online::tests`,
/// `a_read_takes_away_no_answer`).
#[derive(Debug)]
pub enum Read {
    /// Answered (`out` written).
    Done(Result<()>),
    /// Not answered: at least [`ADVANCE_ON_READ_ROWS`] rows to fold out: fold them out first
    /// ([`Shard::advance_key`]) if the write lock is free at once, else answer as is.
    Advance,
}

/// Counters reported by [`Engine::stats`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub events_ingested: u64,
    pub late_events_dropped: u64,
    pub keys_evicted: u64,
    /// Events not applied because they were too far ahead of the watermark (`max_ahead`).
    pub ahead_events_rejected: u64,
    /// Events dropped because their id was applied before (`dedupe_on`).
    pub duplicates_dropped: u64,
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
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ingested {
    /// Events applied.
    pub accepted: u64,
    /// Events dropped as late (older than the watermark before the call minus the allowed
    /// lateness): a caller can warn when this is a large share of the call.
    pub late: u64,
    /// Events rejected as too far ahead of the watermark (`max_ahead`).
    pub ahead: u64,
    /// Events dropped as duplicates of an applied id (`dedupe_on`).
    pub duplicates: u64,
    /// The rows (indices into the batch) rejected as ahead, ascending: a caller routes them
    /// to its dead letters.
    pub rejected: Vec<u32>,
}

impl Ingested {
    fn count(&mut self, v: Verdict, row: usize) -> bool {
        match v {
            Verdict::Apply => {
                self.accepted += 1;
                return true;
            }
            Verdict::Late => self.late += 1,
            Verdict::Duplicate => self.duplicates += 1,
            Verdict::Ahead => {
                self.ahead += 1;
                self.rejected.push(row as u32);
            }
        }
        false
    }
}

/// Number of key shards (a power of two).
pub const SHARDS: usize = 64;

/// Batches at most this large are applied event by event (no partitioning by shard).
const SMALL_INGEST_EVENTS: usize = 32;

/// Batches of at least this many accepted events are applied shard by shard in parallel (on
/// rtml's pool, `crate::pool`). Each shard's events are applied under its own lock
/// in arrival order whichever thread does it, so both paths leave the same state bit for bit
/// (`tests.rs`: `parallel_ingest_equals_sequential`). Measured (docs/benchmarks.md, "Streams
/// in", session 9): a 1,000-event batch of the 18-feature workload already gains on two cores;
/// at 1,024 such batches stayed on one core (session 11, `worker.py online` at rest: batches of
/// 1k 0.63-0.71 M/s at 1,024, 1.04-1.23 M/s at 512).
pub const PARALLEL_INGEST_EVENTS: usize = 512;

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
    keys: HashMap<Key, KeyState>,
    /// When change tracking is on (`publish.rs`): the keys changed since the last publish,
    /// the events applied to each since, and what the store holds for each.
    changed: Option<publish::Tracking>,
}

impl Shard {
    /// Whether `key` has state in this shard.
    pub fn contains(&self, key: KeyRef<'_>) -> bool {
        self.keys.contains_key(&key)
    }

    /// Features of `key` at `t` (NaN = null) into `out`; the empty-history values for an unknown
    /// key.
    pub fn get(&self, plan: &Plan, key: KeyRef<'_>, t: i64, out: &mut [f64]) -> Result<()> {
        self.get_masked(plan, key, t, out, None)
    }

    /// [`Shard::get`] of (at least) the outputs where `mask` is true (see
    /// [`KeyState::query_masked`]; a key without state writes every output).
    pub fn get_masked(
        &self,
        plan: &Plan,
        key: KeyRef<'_>,
        t: i64,
        out: &mut [f64],
        mask: Option<&[bool]>,
    ) -> Result<()> {
        keystate::answer(plan, self.keys.get(&key), t, out, mask)
    }

    /// [`Shard::get`], unless folding out the key's rows that left its windows as settling to
    /// `s` would ([`KeyState::advance_eager`]) saves walking rows: then [`Read::Advance`],
    /// and `out` is untouched (one hash lookup for both).
    pub fn get_unless_advance(
        &self,
        plan: &Plan,
        key: KeyRef<'_>,
        s: i64,
        t: i64,
        out: &mut [f64],
        mask: Option<&[bool]>,
    ) -> Read {
        let state = self.keys.get(&key);
        if let Some(st) = state.filter(|st| st.settled < s) {
            if st.eager_backlog(plan, s, plan.spec.allowed_lateness) >= ADVANCE_ON_READ_ROWS {
                return Read::Advance;
            }
        }
        Read::Done(keystate::answer(plan, state, t, out, mask))
    }

    /// Whether reading `key` at `t` would walk more than [`SETTLE_ON_READ_ROWS`] rows that
    /// settling it to `s` first would save.
    pub fn would_settle(&self, plan: &Plan, key: KeyRef<'_>, s: i64) -> bool {
        self.keys.get(&key).is_some_and(|st| {
            st.settled < s
                && st.settle_backlog(plan, s, plan.spec.allowed_lateness) > SETTLE_ON_READ_ROWS
        })
    }

    /// Apply one accepted event of `key` (time `ts`, one word per plan column) that arrives
    /// when the settled point is `settle`: the one place both ingest paths change state.
    #[inline]
    fn apply(
        &mut self,
        plan: &Plan,
        key: KeyRef<'_>,
        ts: i64,
        vals: &[u64],
        settle: i64,
        texts: &Texts,
    ) {
        let lateness = plan.spec.allowed_lateness;
        // Settling is bookkeeping (no answer depends on it): in steps of lateness / 8.
        let step = lateness / 8;
        let mut created = false;
        let state = self.keys.entry_ref(&key).or_insert_with(|| {
            created = true;
            KeyState::new(plan, settle)
        });
        if plan.has_text_columns() {
            if settle.saturating_sub(state.settled) > step {
                state.settle(plan, settle, lateness);
            }
            state.insert_with_texts(plan, ts, vals, texts);
        } else {
            // the function a remote reader replays a published delta with (`keystate.rs`)
            state.apply_event(plan, ts, vals, settle);
        }
        self.note_changed(key, created, plan, ts, vals, settle);
    }

    /// The strings of `key`'s string outputs in `out` (an answer of [`Self::get`] under the
    /// same lock), into `into`: see [`keystate::texts`].
    pub fn texts(&self, plan: &Plan, key: KeyRef<'_>, out: &[f64], into: &mut Vec<Option<String>>) {
        keystate::texts(plan, self.keys.get(&key), out, into)
    }

    /// Settle one key to `s` (bookkeeping only: no answer changes).
    pub fn settle_key(&mut self, plan: &Plan, key: KeyRef<'_>, s: i64) {
        if let Some(state) = self.keys.get_mut(&key) {
            state.settle(plan, s, plan.spec.allowed_lateness);
        }
    }

    /// Fold out the rows that left one key's windows as settling to `s` would, without
    /// settling it ([`KeyState::advance_eager`]; bookkeeping only: no answer changes, and
    /// every instant answerable before still is).
    pub fn advance_key(&mut self, plan: &Plan, key: KeyRef<'_>, s: i64) {
        if let Some(state) = self.keys.get_mut(&key) {
            state.advance_eager(plan, s, plan.spec.allowed_lateness);
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
    /// The kind of the keys held ([`crate::key`]), fixed by the first key.
    key_kind: Option<u64>,
    watermark: i64,
    counters: Counters,
    last_sweep: i64,
    guard: Guard,
}

pub struct Engine {
    plan: Arc<Plan>,
    /// The guard's bounds (from the plan's feature set).
    rules: Rules,
    shards: Box<[RwLock<Shard>]>,
    /// Held for a whole ingest (and a snapshot): ingests apply one at a time, in call order.
    meta: Mutex<Meta>,
    /// Published copy of the watermark for readers (i64::MIN before the first event).
    watermark: AtomicI64,
    /// Published key kind ([`crate::key`]): 0 none yet.
    kind: AtomicU64,
    /// Accepted events from which a batch is applied in parallel ([`PARALLEL_INGEST_EVENTS`];
    /// tests move it to compare both paths).
    parallel_from: AtomicUsize,
}

impl Engine {
    pub fn new(plan: Arc<Plan>) -> Engine {
        Engine {
            rules: Rules::of(&plan.spec),
            plan,
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
            meta: Mutex::new(Meta {
                key_kind: None,
                watermark: i64::MIN,
                counters: Counters::default(),
                last_sweep: i64::MIN,
                guard: Guard::default(),
            }),
            watermark: AtomicI64::new(i64::MIN),
            kind: AtomicU64::new(0),
            parallel_from: AtomicUsize::new(PARALLEL_INGEST_EVENTS),
        }
    }

    /// Apply batches of at least `events` accepted events shard by shard in parallel (default
    /// [`PARALLEL_INGEST_EVENTS`]; `usize::MAX`: never). The state is the same either way: this
    /// exists to test exactly that, and to measure.
    #[doc(hidden)]
    pub fn set_parallel_ingest_events(&self, events: usize) {
        self.parallel_from.store(events, Ordering::Relaxed);
    }

    /// The compiled feature set.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// Make `meta`'s watermark and key kind visible to readers.
    fn publish(&self, meta: &Meta) {
        self.watermark.store(meta.watermark, Ordering::Release);
        self.kind
            .store(meta.key_kind.unwrap_or(0), Ordering::Release);
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

    /// The kind of a key ([`crate::key`]) for this engine's entity.
    #[inline]
    pub fn kind_of(&self, key: KeyRef<'_>) -> u64 {
        crate::key::kind_of(key, self.plan.spec.entity.parts())
    }

    /// Check that a key kind ([`crate::key`]) matches what this engine holds.
    pub fn check_key_kind(&self, kind: u64) -> Result<()> {
        let held = match self.kind.load(Ordering::Acquire) {
            0 => None,
            k => Some(k),
        };
        self.check_kind(held, kind)
    }

    /// Check that `key` is of the kind this engine holds.
    pub fn check_key(&self, key: KeyRef<'_>) -> Result<()> {
        self.check_key_kind(self.kind_of(key))
    }

    /// The kind of the keys held (`None` before the first key).
    pub fn key_kind(&self) -> Option<u64> {
        match self.kind.load(Ordering::Acquire) {
            0 => None,
            k => Some(k),
        }
    }

    fn check_kind(&self, held: Option<u64>, kind: u64) -> Result<()> {
        match held {
            Some(k) if k != kind => {
                let entity = &self.plan.spec.entity;
                Err(Error::schema(
                    entity,
                    format!(
                        "this engine holds {} keys, got {} keys",
                        entity.describe_kind(k),
                        entity.describe_kind(kind)
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Apply a batch of validated events as one arrival: in time order (ties by value),
    /// whatever their order in the batch; events older than the watermark before the batch minus
    /// the allowed lateness are dropped and counted ([`Ingested::late`]). Fails only on a
    /// key-kind mismatch, before changing anything.
    pub fn ingest(&self, events: &Events<'_>) -> Result<Ingested> {
        let mut meta = self.meta.lock();
        self.ingest_locked(&mut meta, events)
    }

    /// [`Engine::ingest`] with the ingest lock already held.
    pub fn ingest_locked(&self, meta: &mut Meta, events: &Events<'_>) -> Result<Ingested> {
        self.ingest_with(meta, events, self.rules)
    }

    /// [`Engine::ingest`] of trusted events (a history to bootstrap from): no watermark guard
    /// (as backfill, which has none without an arrival order); lateness and deduplication
    /// apply as usual.
    pub fn ingest_trusted(&self, events: &Events<'_>) -> Result<Ingested> {
        let mut meta = self.meta.lock();
        let rules = Rules {
            max_ahead: None,
            ..self.rules
        };
        self.ingest_with(&mut meta, events, rules)
    }

    fn ingest_with(&self, meta: &mut Meta, events: &Events<'_>, rules: Rules) -> Result<Ingested> {
        let Some(kind) = events.key_kind() else {
            return Ok(Ingested::default());
        };
        self.check_kind(meta.key_kind, kind)?;
        meta.key_kind = Some(kind);
        let plan = &*self.plan;
        let lateness = plan.spec.allowed_lateness;
        let mut report = Ingested::default();
        let apply_one = |shard: &mut Shard, vals: &mut [u64], i: usize, key: KeyRef<'_>, settle| {
            for (c, v) in vals.iter_mut().enumerate() {
                *v = events.values[c][i];
            }
            shard.apply(plan, key, events.ts[i], vals, settle, &events.texts);
        };
        let mut vals: SmallVec<[u64; 8]> = SmallVec::from_elem(0, plan.columns.len());
        // A batch is one arrival: its events apply in time order (ties by value), whatever
        // their order in the batch, so an event is late only if it is older than the watermark
        // before the batch minus the allowed lateness, and any permutation of a batch leaves the
        // same state. A batch already in that order (the common case) is not sorted.
        let order = (!events.in_arrival_order()).then(|| events.arrival_order());
        let order = order.as_deref();
        let n = events.len();
        let mid = n.saturating_sub(1) / 2;
        let median_row = order.map_or(mid, |o| o[mid] as usize);
        let mut reference = guard::reference(
            meta.watermark,
            events.ts.get(median_row).copied().unwrap_or(i64::MIN),
        );
        meta.guard.start_batch(rules, reference);
        let gate = &mut meta.guard;
        if events.len() <= SMALL_INGEST_EVENTS {
            // A few events (row dicts): partitioned on the stack. Each shard's events are
            // applied in arrival order under one lock hold, so a reader sees all of a key's
            // events of this batch or none.
            let mut watermark = meta.watermark;
            // (shard, place in arrival order, row, key, settled point it arrives at)
            type Todo<'k> = (usize, usize, usize, KeyRef<'k>, i64);
            let mut todo: SmallVec<[Todo<'_>; SMALL_INGEST_EVENTS]> = SmallVec::new();
            events.for_each_key_in(order, |i, key| {
                let ts = events.ts[i];
                let v = gate.judge(rules, &mut watermark, &mut reference, ts, events.id(i));
                if !report.count(v, i) {
                    return;
                }
                let seq = todo.len();
                todo.push((
                    shard_of(key),
                    seq,
                    i,
                    key,
                    watermark.saturating_sub(lateness),
                ));
            });
            todo.sort_by_key(|e| (e.0, e.1));
            for run in todo.chunk_by(|a, b| a.0 == b.0) {
                let mut shard = self.shards[run[0].0].write();
                for &(_, _, i, key, settle) in run {
                    apply_one(&mut shard, &mut vals, i, key, settle);
                }
            }
            meta.watermark = watermark;
            return Ok(self.finish_ingest(meta, report));
        }
        // Pass 1, in arrival order: which events are late, and the settled point each one
        // arrives at (the running watermark - lateness); each accepted event to its shard.
        let mut watermark = meta.watermark;
        let mut settle_at: Vec<i64> = vec![i64::MIN; n];
        let mut by_shard: Vec<Vec<(u32, KeyRef<'_>)>> = vec![Vec::new(); SHARDS];
        events.for_each_key_in(order, |i, key| {
            let ts = events.ts[i];
            let v = gate.judge(rules, &mut watermark, &mut reference, ts, events.id(i));
            if !report.count(v, i) {
                return;
            }
            settle_at[i] = watermark.saturating_sub(lateness);
            by_shard[shard_of(key)].push((i as u32, key));
        });
        // Pass 2: each shard's events in arrival order under that shard's lock.
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
        if report.accepted as usize >= self.parallel_from.load(Ordering::Relaxed) {
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

    /// One event (key, time, one word per plan column) with the ingest lock held: exactly
    /// [`Engine::ingest_locked`] on a one-event batch, without building one.
    pub fn ingest_one_locked(
        &self,
        meta: &mut Meta,
        key: KeyRef<'_>,
        ts: i64,
        vals: &[u64],
        id: Option<EventId>,
    ) -> Result<Ingested> {
        self.ingest_one_with_texts(meta, key, ts, vals, id, &Texts::default())
    }

    /// [`Engine::ingest_one_locked`] of an event whose string-column words have their strings
    /// in `texts`.
    pub fn ingest_one_with_texts(
        &self,
        meta: &mut Meta,
        key: KeyRef<'_>,
        ts: i64,
        vals: &[u64],
        id: Option<EventId>,
        texts: &Texts,
    ) -> Result<Ingested> {
        debug_assert_eq!(vals.len(), self.plan.columns.len());
        let kind = self.kind_of(key);
        self.check_kind(meta.key_kind, kind)?;
        meta.key_kind = Some(kind);
        let plan = &*self.plan;
        let lateness = plan.spec.allowed_lateness;
        let mut report = Ingested::default();
        let rules = self.rules;
        let mut reference = guard::reference(meta.watermark, ts);
        meta.guard.start_batch(rules, reference);
        let mut watermark = meta.watermark;
        let v = meta
            .guard
            .judge(rules, &mut watermark, &mut reference, ts, id);
        if report.count(v, 0) {
            let settle = watermark.saturating_sub(lateness);
            self.shard(key)
                .write()
                .apply(plan, key, ts, vals, settle, texts);
            meta.watermark = watermark;
        }
        Ok(self.finish_ingest(meta, report))
    }

    /// [`Engine::ingest_one_locked`], taking the ingest lock.
    pub fn ingest_one(
        &self,
        key: KeyRef<'_>,
        ts: i64,
        vals: &[u64],
        id: Option<EventId>,
    ) -> Result<Ingested> {
        let mut meta = self.meta.lock();
        self.ingest_one_locked(&mut meta, key, ts, vals, id)
    }

    fn finish_ingest(&self, meta: &mut Meta, mut report: Ingested) -> Ingested {
        report.rejected.sort_unstable();
        self.publish(meta);
        meta.counters.events_ingested += report.accepted;
        meta.counters.late_events_dropped += report.late;
        meta.counters.ahead_events_rejected += report.ahead;
        meta.counters.duplicates_dropped += report.duplicates;
        meta.guard.end_batch(self.rules, meta.watermark);
        self.maybe_sweep(meta);
        report
    }

    /// Move the watermark forward to `t` (no change if it is already there): the explicit
    /// way to tell the guard where the stream is, e.g. to seed an empty engine with the wall
    /// clock before the first event, or to follow a stream that jumped ahead at once. Events
    /// older than `t - allowed_lateness` are late from then on. Returns the watermark.
    pub fn advance_watermark(&self, t: i64) -> i64 {
        let mut meta = self.meta.lock();
        if t > meta.watermark {
            meta.watermark = t;
            let rules = self.rules;
            meta.guard.start_batch(rules, t);
            meta.guard.end_batch(rules, t);
            self.publish(&meta);
            self.maybe_sweep(&mut meta);
        }
        meta.watermark
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
            shard.forget_evicted();
        }
        meta.counters.keys_evicted += evicted as u64;
        meta.last_sweep = meta.watermark;
        evicted
    }

    /// Features of `key` at instant `t` (NaN = null) into `out`.
    pub fn get(&self, key: KeyRef<'_>, t: i64, out: &mut [f64]) -> Result<()> {
        self.check_key(key)?;
        let s = t.min(self.settle_point());
        let lock = self.shard(key);
        match lock
            .read()
            .get_unless_advance(&self.plan, key, s, t, out, None)
        {
            Read::Done(r) => return r,
            Read::Advance => {}
        }
        // fold out under the write lock if it is free at once, then read under the same
        // hold, downgraded
        match lock.try_write() {
            Some(mut w) => {
                w.advance_key(&self.plan, key, s);
                RwLockWriteGuard::downgrade(w).get(&self.plan, key, t, out)
            }
            None => lock.read().get(&self.plan, key, t, out),
        }
    }

    /// Whether a query of `key` at `t` would walk so many rows of a lagging settled point
    /// (more than [`SETTLE_ON_READ_ROWS`]) that settling the key first with
    /// [`Engine::settle_key`] pays off (for this query and later ones). Usually false: the
    /// ingest path keeps keys settled.
    pub fn would_settle(&self, key: KeyRef<'_>, t: i64) -> bool {
        let s = t.min(self.settle_point());
        self.shard(key).read().would_settle(&self.plan, key, s)
    }

    /// Settle one key up to `min(t, watermark - allowed_lateness)`. Bookkeeping: no answer at
    /// or after that point changes, but the key refuses every instant before it from then on
    /// (an unread key answers back to its own settled point): reads never call this.
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
        state_bytes += meta.guard.bytes();
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
        snapshot::write(self, path)
    }

    /// The snapshot file's bytes, in memory (a consistent cut, as [`Engine::snapshot`]).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        snapshot::encode(self, Path::new("<bytes>"))
    }

    /// An engine from [`Engine::to_bytes`] (or a snapshot file's bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Engine> {
        snapshot::decode(bytes, Path::new("<bytes>"))
    }

    pub fn restore(path: &Path) -> Result<Engine> {
        snapshot::read(path)
    }
}

#[cfg(test)]
mod tests;

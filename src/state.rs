//! Per-entity window state: the one piece of code that both backfill and the online engine run.
//!
//! A key's state holds
//! * `buf`: its recent events sorted by time (ties in any order), one row of
//!   `1 + columns` u64 words each: the timestamp, then each value (f64 bits, or a 64-bit
//!   identity for strings; [`NULL`] for null);
//! * `settled`: the instant `S` up to which the accumulators are folded: each window group
//!   holds exactly the events with `S - W <= ts < S` (lifetime: `ts < S`). Events only enter
//!   that region in time order (an out-of-order event has `ts >= S`), which is what lets
//!   min / max use monotonic deques;
//! * per window group, accumulators over that region. Every accumulator is a function of the
//!   multiset of events it covers (exact sums, bucket counts, multisets), never of the order
//!   in which they came.
//!
//! A query at `t >= S` reads the settled accumulators and corrects them with the few buffered
//! events between the settled region and the query window, without mutating anything. Backfill
//! settles at each spine time and queries there; the online engine settles lazily to
//! `watermark - allowed_lateness`. Both read the same multiset, hence the same bits.

use std::cell::RefCell;
use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::agg::{Acc, Corr, Rows, View};
use crate::error::{Error, Result};
use crate::plan::{ColKind, Plan};
use crate::text::Texts;
use crate::time::floor_div;

/// The stored value of a null (defined with the row encoding in [`crate::input::row`]).
pub use crate::input::row::NULL;

mod tiles;
pub use tiles::{Tile, TileRows};

/// Events of one key, sorted by time, stored row-major with a movable front.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Buf {
    stride: usize,
    data: Vec<u64>,
    /// Dead rows at the front of `data`.
    off: usize,
    /// Absolute position of the first live row.
    base: u64,
    /// Keep the allocation when rows leave (backfill: one state serves a worker's keys one
    /// after another, so capacity given back is asked for again by the next key). Not
    /// stored: a loaded state gives capacity back.
    #[serde(skip)]
    keep_capacity: bool,
}

impl Buf {
    fn new(stride: usize) -> Buf {
        Buf {
            stride,
            data: Vec::new(),
            off: 0,
            base: 0,
            keep_capacity: false,
        }
    }
    #[inline]
    pub fn len(&self) -> usize {
        self.data.len() / self.stride - self.off
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    #[inline]
    fn row(&self, abs: u64) -> &[u64] {
        let i = (abs - self.base) as usize + self.off;
        &self.data[i * self.stride..(i + 1) * self.stride]
    }
    #[inline]
    fn ts(&self, abs: u64) -> i64 {
        self.data[((abs - self.base) as usize + self.off) * self.stride] as i64
    }
    #[inline]
    fn end(&self) -> u64 {
        self.base + self.len() as u64
    }
    /// First absolute position `>= from` whose time is `>= t` (rows are sorted).
    fn seek(&self, from: u64, t: i64) -> u64 {
        let (mut lo, mut hi) = (from, self.end());
        // Gallop: most seeks move a few rows.
        let mut step = 1;
        while lo < hi {
            let probe = (lo + step - 1).min(hi - 1);
            if self.ts(probe) >= t {
                hi = probe;
                break;
            }
            lo = probe + 1;
            step *= 2;
        }
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.ts(mid) >= t {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        lo
    }
    /// [`Self::seek`] by a walk row by row: the same position (rows are sorted), cheaper when
    /// it moves a few rows (a settle's runs).
    #[inline]
    fn scan(&self, from: u64, t: i64) -> u64 {
        let i = (from - self.base) as usize + self.off;
        let moved = self.data[i * self.stride..]
            .iter()
            .step_by(self.stride)
            .take_while(|&&ts| (ts as i64) < t)
            .count();
        from + moved as u64
    }
    /// Insert keeping time order; a new row goes after every row with time `<= ts`.
    /// Returns its absolute position.
    fn insert(&mut self, ts: i64, values: &[u64]) -> u64 {
        let end = self.end();
        let mut pos = end;
        while pos > self.base && self.ts(pos - 1) > ts {
            pos -= 1;
            if end - pos > 16 {
                // far back: binary search the rest
                let (mut lo, mut hi) = (self.base, pos);
                while lo < hi {
                    let mid = lo + (hi - lo) / 2;
                    if self.ts(mid) > ts {
                        hi = mid;
                    } else {
                        lo = mid + 1;
                    }
                }
                pos = lo;
                break;
            }
        }
        let at = ((pos - self.base) as usize + self.off) * self.stride;
        if pos == end {
            self.data.push(ts as u64);
            self.data.extend_from_slice(values);
        } else {
            self.data.splice(
                at..at,
                std::iter::once(ts as u64).chain(values.iter().copied()),
            );
        }
        pos
    }
    /// Drop live rows before absolute position `abs`.
    fn evict_before(&mut self, abs: u64) {
        if abs <= self.base {
            return;
        }
        let n = (abs - self.base) as usize;
        self.off += n;
        self.base = abs;
        // Dead rows go once they are half as many as the live ones (each live row is moved
        // about twice per window it stays in); then capacity beyond 2.5x the live rows goes
        // back, down to 1.75x: room for the dead rows to come, so a key in a steady state
        // neither grows nor shrinks again (hysteresis).
        if self.off > 32 && self.off * 2 >= self.len() {
            self.data.drain(0..self.off * self.stride);
            self.off = 0;
            let len = self.data.len();
            if !self.keep_capacity && self.data.capacity() > len * 5 / 2 {
                self.data.shrink_to(len * 7 / 4);
            }
        }
        if !self.keep_capacity && self.is_empty() && self.data.capacity() > 64 {
            self.data.shrink_to(16 * self.stride);
        }
    }
    /// The rows, for output functions.
    #[inline]
    fn rows(&self) -> Rows<'_> {
        Rows {
            data: &self.data,
            stride: self.stride,
            off: self.off,
            base: self.base,
        }
    }
    fn bytes(&self) -> usize {
        std::mem::size_of::<Self>() + 8 * self.data.capacity()
    }
    /// Empty, as new, keeping the allocation, with room for `rows` rows (at most
    /// [`Self::MAX_RESERVE`]); from now on the allocation is kept (`keep_capacity`).
    fn clear_for(&mut self, rows: usize) {
        self.data.clear();
        self.off = 0;
        self.base = 0;
        self.keep_capacity = true;
        self.data.reserve(rows.min(Self::MAX_RESERVE) * self.stride);
    }
    /// Rows [`Self::clear_for`] reserves at most (a large key grows as it needs).
    const MAX_RESERVE: usize = 4096;
}

#[cfg(test)]
mod buf_tests {
    use super::Buf;
    use proptest::prelude::*;

    proptest! {
        /// `scan` (the walk settling uses) lands where `seek` (the gallop) does, from every
        /// live position, for times before, between, at and after the rows'.
        #[test]
        fn scan_is_seek(
            times in proptest::collection::vec(0i64..50, 0..60),
            evict in 0usize..70,
            probes in proptest::collection::vec((0usize..70, -2i64..53), 1..20),
        ) {
            let mut b = Buf::new(2);
            for (i, &t) in times.iter().enumerate() {
                b.insert(t, &[i as u64]);
            }
            b.evict_before(b.base + evict.min(b.len()) as u64);
            for (from, t) in probes {
                let from = b.base + from.min(b.len()) as u64;
                prop_assert_eq!(b.scan(from, t), b.seek(from, t));
            }
        }

        /// Whatever the evictions, the live rows are those of a plain list of them, and after a
        /// drain the capacity stays within 2.5x of the live rows (past a small floor).
        #[test]
        fn evictions_keep_the_rows_and_give_back_capacity(
            steps in proptest::collection::vec((0i64..1_000, 0usize..8, 0usize..4), 1..400),
            keep in proptest::option::of(0usize..100),
        ) {
            let mut b = Buf::new(2);
            // backfill's buffer (`clear_for`): room for some rows, and capacity kept
            if let Some(rows) = keep {
                b.insert(5, &[1]);
                b.clear_for(rows);
                prop_assert!(b.is_empty() && b.data.capacity() >= 2 * rows);
            }
            let mut cap = b.data.capacity();
            let mut model: Vec<(i64, u64)> = Vec::new();
            let mut base = 0u64;
            for (i, (t, inserts, evicts)) in steps.into_iter().enumerate() {
                for k in 0..inserts {
                    let v = (i * 8 + k) as u64;
                    let pos = b.insert(t, &[v]);
                    let at = model.partition_point(|r| r.0 <= t);
                    prop_assert_eq!(pos, base + at as u64);
                    model.insert(at, (t, v));
                }
                let n = evicts.min(model.len());
                b.evict_before(base + n as u64);
                model.drain(..n);
                base += n as u64;
                prop_assert_eq!(b.len(), model.len());
                let rows: Vec<(i64, u64)> =
                    (base..b.end()).map(|p| (b.ts(p), b.row(p)[1])).collect();
                prop_assert_eq!(&rows, &model);
                if keep.is_some() {
                    prop_assert!(b.data.capacity() >= cap);
                    cap = b.data.capacity();
                } else if b.off == 0 && b.data.len() > 64 * b.stride {
                    prop_assert!(b.data.capacity() <= b.data.len() * 5 / 2);
                }
            }
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Group {
    /// Absolute positions: the settled region is rows `lo..hi` (lifetime: everything before `hi`).
    lo: u64,
    hi: u64,
    /// Sliding windows: the eager region is rows `e_lo..` (every row with `ts >= e_start`,
    /// including rows not yet settled); lifetime: every row. `e_start <= settled` after
    /// settling; a read may advance it further (`advance_eager`).
    e_lo: u64,
    e_start: i64,
    /// Eager accumulators cover the eager region, the others the settled region.
    accs: Vec<Acc>,
    /// Tiled windows: summaries of tiles settled by snapshot format 4 and before (key-state
    /// format 3), oldest first, only tiles that a query at or after the settled point can still
    /// see; today's tiles are the key's [`TileRows`].
    tiles: VecDeque<Tile>,
    /// Tiled windows: the eager accumulators (`accs`) hold the [`TileRows`] of tiles
    /// `run_from..`; extremes and first / last are read from the rows. `i64::MIN` otherwise.
    /// Snapshot format 5 on.
    run_from: i64,
}

/// A window group as snapshot format 4 (and key-state format 3) stored it: before
/// [`Group::run_from`].
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
pub(crate) struct GroupV4 {
    lo: u64,
    hi: u64,
    e_lo: u64,
    e_start: i64,
    accs: Vec<Acc>,
    tiles: VecDeque<Tile>,
}

impl GroupV4 {
    fn upgrade(self) -> Group {
        Group {
            lo: self.lo,
            hi: self.hi,
            e_lo: self.e_lo,
            e_start: self.e_start,
            accs: self.accs,
            tiles: self.tiles,
            run_from: i64::MIN,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyState {
    pub settled: i64,
    /// Latest event time seen for this key (for TTL).
    pub last_ts: i64,
    buf: Buf,
    groups: Vec<Group>,
    /// The strings of the words of `string_columns` columns in `buf` (and maybe a few more,
    /// until the next sweep). Snapshot format 4 on.
    texts: Texts,
    /// The settled events of the tiled windows. Snapshot format 5 on.
    tile_rows: TileRows,
}

/// A key's state as snapshot format 3 (and published values of version 1) stored it: before
/// string columns kept their strings.
#[derive(Deserialize)]
pub(crate) struct KeyStateV3 {
    settled: i64,
    last_ts: i64,
    buf: Buf,
    groups: Vec<GroupV4>,
}

impl KeyStateV3 {
    /// The same state today (no strings: format 3 had no string columns).
    pub(crate) fn upgrade(self) -> KeyState {
        KeyStateV4 {
            settled: self.settled,
            last_ts: self.last_ts,
            buf: self.buf,
            groups: self.groups,
            texts: Texts::default(),
        }
        .upgrade()
    }
}

/// A key's state as snapshot format 4 (and published values of versions 2 and 3) stored it:
/// tiled windows kept a summary per tile.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
pub(crate) struct KeyStateV4 {
    settled: i64,
    last_ts: i64,
    buf: Buf,
    groups: Vec<GroupV4>,
    texts: Texts,
}

impl KeyStateV4 {
    /// The same state today: its tiles' summaries are read until they leave the window, the
    /// events settled from now on join the tile rows.
    pub(crate) fn upgrade(self) -> KeyState {
        KeyState {
            settled: self.settled,
            last_ts: self.last_ts,
            buf: self.buf,
            groups: self.groups.into_iter().map(GroupV4::upgrade).collect(),
            texts: self.texts,
            tile_rows: TileRows::default(),
        }
    }
}

impl KeyState {
    pub fn new(plan: &Plan, settled: i64) -> KeyState {
        KeyState {
            texts: Texts::default(),
            settled,
            last_ts: i64::MIN,
            buf: Buf::new(1 + plan.columns.len()),
            groups: plan
                .groups
                .iter()
                .map(|g| Group {
                    lo: 0,
                    hi: 0,
                    e_lo: 0,
                    e_start: i64::MIN,
                    accs: g.accs.iter().map(Acc::new).collect(),
                    tiles: VecDeque::new(),
                    run_from: i64::MIN,
                })
                .collect(),
            tile_rows: TileRows::default(),
        }
    }

    /// Back to `KeyState::new(plan, settled)` (same plan) for another key, keeping allocations (backfill
    /// workers reuse one state for all their keys), with buffer room for `events` events (the
    /// key's event count, when known: no reallocation as they arrive). From then on the buffer
    /// keeps its allocation as rows leave (the next key will need it again).
    pub fn reset(&mut self, settled: i64, events: usize) {
        self.settled = settled;
        self.last_ts = i64::MIN;
        self.buf.clear_for(events);
        self.texts.clear();
        self.tile_rows.clear();
        for g in self.groups.iter_mut() {
            g.lo = 0;
            g.hi = 0;
            g.e_lo = 0;
            g.e_start = i64::MIN;
            g.tiles.clear();
            g.run_from = i64::MIN;
            for acc in g.accs.iter_mut() {
                acc.reset();
            }
        }
    }

    /// [`Self::insert`] of an event whose string-column words have their strings in `texts`
    /// (the input's): the state keeps the strings of the rows it stores.
    pub fn insert_with_texts(&mut self, plan: &Plan, ts: i64, values: &[u64], texts: &Texts) {
        for (c, v) in plan.columns.iter().zip(values) {
            if c.kind == ColKind::Text {
                self.texts.take_from(*v, texts);
            }
        }
        self.insert(plan, ts, values);
    }

    /// The string of a string output's answer (`Output::text`; `None`: null).
    pub fn text(&self, answer: f64) -> Option<&str> {
        crate::agg::text_word(answer).and_then(|w| self.texts.get(w))
    }

    /// The string words the accumulators hold (lifetime picks, [`crate::agg::TextPick`]).
    fn acc_words(&self) -> impl Iterator<Item = u64> + '_ {
        self.groups
            .iter()
            .flat_map(|g| g.accs.iter().chain(g.tiles.iter().flat_map(|t| &t.accs)))
            .filter_map(Acc::text_word)
    }

    /// Forget the strings no buffered row and no accumulator holds, once they are more than
    /// twice the words those can hold (amortized O(1) per stored string).
    fn sweep_texts(&mut self, plan: &Plan) {
        let text_cols: SmallVec<[usize; 4]> = plan
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.kind == ColKind::Text)
            .map(|(i, _)| i)
            .collect();
        let picks = plan
            .groups
            .iter()
            .flat_map(|g| &g.accs)
            .filter(|a| matches!(a, crate::agg::AccPlan::TextPick { .. }))
            .count();
        let bound = self.buf.len() * text_cols.len() + picks;
        if self.texts.len() <= 16 + 2 * bound {
            return;
        }
        let mut live: hashbrown::HashSet<u64> = self.acc_words().collect();
        live.reserve(bound);
        let b = &self.buf;
        for p in b.base..b.end() {
            let row = b.row(p);
            for &c in &text_cols {
                live.insert(row[1 + c]);
            }
        }
        self.texts.retain(|w| live.contains(&w));
    }

    /// How the online engine applies one accepted event (no strings) that arrives when the
    /// stream's settled point is `settle`: settle first, in steps of `allowed_lateness / 8`
    /// (bookkeeping: no answer depends on it), then insert. The one function behind both the
    /// engine's ingest and a remote reader's replay of a published delta
    /// (`online::keystate`), so both hold the same state.
    #[inline]
    pub fn apply_event(&mut self, plan: &Plan, ts: i64, values: &[u64], settle: i64) {
        let lateness = plan.spec.allowed_lateness;
        if settle.saturating_sub(self.settled) > lateness / 8 {
            self.settle(plan, settle, lateness);
        }
        self.insert(plan, ts, values);
    }

    /// Add an event with `ts >= self.settled`. `values` has one word per plan column.
    /// The eager accumulators of every untiled group take it in at once.
    pub fn insert(&mut self, plan: &Plan, ts: i64, values: &[u64]) {
        debug_assert!(ts >= self.settled);
        let pos = self.buf.insert(ts, values);
        self.last_ts = self.last_ts.max(ts);
        let row = self.buf.row(pos);
        for (g, gp) in self.groups.iter_mut().zip(&plan.groups) {
            if gp.hop.is_some() {
                continue;
            }
            debug_assert!(ts >= g.e_start && pos >= g.e_lo);
            for (acc, ap) in g.accs.iter_mut().zip(&gp.accs) {
                acc.apply_if_eager(ap, row, 1);
            }
        }
    }

    /// Move the settled point forward to `s` (no-op if `s <= settled`).
    ///
    /// `lead` is how far past the settled point queries are expected (the online engine's
    /// allowed lateness; 0 for backfill, which queries at the settled point): the eager region of
    /// a window `W` then starts at `s - W + min(lead, W)`, so that a query at
    /// `s + lead` needs (almost) no correction, while every event that can still arrive
    /// (`ts >= s`) falls inside it.
    pub fn settle(&mut self, plan: &Plan, s: i64, lead: i64) {
        if s <= self.settled {
            return;
        }
        let mut keep_from = self.buf.end();
        // Tiled windows: the rows settling now join the tile rows, once for every tiled group
        // (they all settled up to the same row).
        let stride = self.buf.stride;
        let (fresh, tiled_hi) = match plan.groups.iter().position(|gp| gp.hop.is_some()) {
            Some(i) => {
                let from = self.groups[i].hi;
                let to = self.buf.seek(from, s);
                let fresh = self.tile_rows.len(stride);
                for p in from..to {
                    self.tile_rows.push(self.buf.row(p));
                }
                (fresh, to)
            }
            None => (0, 0),
        };
        let mut tiles_from = i64::MAX;
        for (g, gp) in self.groups.iter_mut().zip(&plan.groups) {
            if let (Some(w), Some(h)) = (gp.window, gp.hop) {
                g.hi = tiled_hi;
                g.lo = g.hi;
                let first_needed = floor_div(s, h).saturating_sub(w / h);
                // the first tile of a query `lead` past the settled point
                let run = floor_div(s.saturating_add(lead.max(0)), h)
                    .saturating_sub(w / h)
                    .max(g.run_from)
                    .max(first_needed);
                let rows = &self.tile_rows;
                let edge = |id: i64| rows.seek(id.saturating_mul(h), stride);
                if run > g.run_from {
                    // the rows of tiles `run_from..run` the accumulators hold leave them
                    let (a, b) = (edge(g.run_from), edge(run).min(fresh));
                    if a < b {
                        for (acc, ap) in g.accs.iter_mut().zip(&gp.accs) {
                            if acc.eager() {
                                acc.apply_rows(ap, rows.run(a, b, stride), -1, false);
                            }
                        }
                    }
                    g.run_from = run;
                }
                // the settling rows of tiles `run..` join them
                let (a, b) = (edge(run).max(fresh), rows.len(stride));
                if a < b {
                    for (acc, ap) in g.accs.iter_mut().zip(&gp.accs) {
                        if acc.eager() {
                            acc.apply_rows(ap, rows.run(a, b, stride), 1, false);
                        }
                    }
                }
                while g.tiles.front().is_some_and(|t| t.id < first_needed) {
                    g.tiles.pop_front();
                }
                tiles_from = tiles_from.min(first_needed.saturating_mul(h));
                keep_from = keep_from.min(g.hi);
                continue;
            }
            let lifetime = gp.window.is_none();
            // Rows `hi..` before `s` enter the settled region: each accumulator takes the run
            // in time order (accumulators are independent: the same state as row by row).
            let from = g.hi;
            g.hi = self.buf.scan(from, s);
            if g.hi > from {
                let rows = self.buf.rows();
                // the non-eager accumulators (a deque another group's answers for is left
                // empty: `GroupPlan::shared`)
                for &i in &gp.steps.settle {
                    if gp.shared[i].is_none() {
                        g.accs[i].apply_rows(&gp.accs[i], rows.run((from, g.hi)), 1, lifetime);
                    }
                }
                // lifetime picks of strings compare the strings
                if lifetime {
                    for &i in &gp.steps.texts {
                        g.accs[i].fold_texts(&gp.accs[i], rows.run((from, g.hi)), &self.texts);
                    }
                }
            }
            match gp.window {
                Some(w) => {
                    let start = s.saturating_sub(w);
                    g.lo = self.buf.scan(g.lo, start).min(g.hi);
                    for &i in &gp.steps.after {
                        g.accs[i].settled(&gp.accs[i], s, Some(start));
                    }
                    Self::fold_out_eager(&self.buf, g, gp, Self::eager_start(g, w, s, lead));
                    keep_from = keep_from.min(g.lo);
                }
                None => {
                    g.lo = g.hi;
                    keep_from = keep_from.min(g.hi);
                    for &i in &gp.steps.after {
                        g.accs[i].settled(&gp.accs[i], s, None);
                    }
                }
            }
        }
        if tiles_from < i64::MAX {
            if let Some(big) = plan.groups.iter().filter_map(|gp| gp.hop).max() {
                // the spans of the longest hop that took rows since the last settle
                let from = floor_div(self.settled, big)
                    .saturating_mul(big)
                    .max(tiles_from);
                self.summarize_busy_spans(plan, s, from, s, big);
            }
            self.tile_rows.drop_before(tiles_from, stride);
        }
        self.buf.evict_before(keep_from);
        self.settled = s;
        if !self.texts.is_empty() {
            self.sweep_texts(plan);
        }
    }

    /// How many rows settling to `s` would fold into or out of the accumulators: the rows a
    /// query's corrections would no longer have to walk once the key is settled.
    pub fn settle_backlog(&self, plan: &Plan, s: i64, lead: i64) -> u64 {
        let (all, _) = self.backlogs(plan, s, lead);
        all
    }

    /// [`Self::settle_backlog`], and of those rows the ones [`Self::advance_eager`] would fold
    /// out of the eager accumulators.
    pub fn backlogs(&self, plan: &Plan, s: i64, lead: i64) -> (u64, u64) {
        if s <= self.settled {
            return (0, 0);
        }
        let (mut n, mut eager) = (0, 0);
        for (g, gp) in self.groups.iter().zip(&plan.groups) {
            n += self.buf.seek(g.hi, s) - g.hi;
            if let (Some(w), None) = (gp.window, gp.hop) {
                let e_start = Self::eager_start(g, w, s, lead);
                eager += self.buf.seek(g.e_lo, e_start) - g.e_lo;
            }
        }
        (n + eager, eager)
    }

    /// Where settling to `s` starts the eager region of a sliding group of window `w`.
    #[inline]
    fn eager_start(g: &Group, w: i64, s: i64, lead: i64) -> i64 {
        s.saturating_add(lead.saturating_sub(w).min(0))
            .max(g.e_start)
    }

    /// The eager part of [`Self::settle`] to `s` alone: each sliding group's eager region starts
    /// where settling to `s` would start it, its rows before that folded out of the eager
    /// accumulators; the settled point, the settled region and the buffer stay. Bookkeeping
    /// like settling (the eager region still holds every row from its start on, and every
    /// event that can still arrive, `ts >= s`; a query before the region's start adds the
    /// buffered rows back), but every query answered before is still answered (a read may do
    /// it without taking away answers at instants between the settled point and `s`).
    /// A lagging key's reads then walk no fold-outs.
    pub fn advance_eager(&mut self, plan: &Plan, s: i64, lead: i64) {
        if s <= self.settled {
            return;
        }
        for (g, gp) in self.groups.iter_mut().zip(&plan.groups) {
            let (Some(w), None) = (gp.window, gp.hop) else {
                continue;
            };
            Self::fold_out_eager(&self.buf, g, gp, Self::eager_start(g, w, s, lead));
        }
    }

    /// A sliding group's eager region starts at `e_start` from now on: its rows before that
    /// leave the eager accumulators, as one run per accumulator ([`Self::settle`] and
    /// [`Self::advance_eager`] both move it this way).
    #[inline]
    fn fold_out_eager(buf: &Buf, g: &mut Group, gp: &crate::plan::GroupPlan, e_start: i64) {
        let from = g.e_lo;
        g.e_lo = buf.scan(from, e_start);
        if g.e_lo > from {
            let rows = buf.rows();
            for &i in &gp.steps.eager {
                g.accs[i].apply_rows(&gp.accs[i], rows.run((from, g.e_lo)), -1, false);
            }
        }
        g.e_start = e_start;
    }

    /// The rows [`Self::advance_eager`] to `s` would fold out of the eager accumulators (the
    /// second count of [`Self::backlogs`], without its first: what a read asks).
    #[inline]
    pub fn eager_backlog(&self, plan: &Plan, s: i64, lead: i64) -> u64 {
        if s <= self.settled {
            return 0;
        }
        let mut eager = 0;
        for (g, gp) in self.groups.iter().zip(&plan.groups) {
            if let (Some(w), None) = (gp.window, gp.hop) {
                let e_start = Self::eager_start(g, w, s, lead);
                // the first probe inline: usually nothing to fold out
                let b = &self.buf;
                if g.e_lo < b.end() && b.ts(g.e_lo) < e_start {
                    eager += b.seek(g.e_lo, e_start) - g.e_lo;
                }
            }
        }
        eager
    }

    /// Feature values at instant `t` (NaN = null), in plan output order.
    pub fn query(&self, plan: &Plan, t: i64, out: &mut [f64]) -> Result<()> {
        self.query_masked(plan, t, out, None)
    }

    /// [`Self::query`] of only the outputs where `mask` is true (the others are not written):
    /// a serving call that needs a few features computes only those.
    pub fn query_masked(
        &self,
        plan: &Plan,
        t: i64,
        out: &mut [f64],
        mask: Option<&[bool]>,
    ) -> Result<()> {
        if t < self.settled {
            return Err(Error::Query(format!(
                "cannot answer at {}: this key's state is settled up to {} (watermark - allowed_lateness); raise allowed_lateness to query further back",
                crate::time::iso(t),
                crate::time::iso(self.settled)
            )));
        }
        self.fill(plan, t, out, mask);
        Ok(())
    }

    pub fn evaluate(&self, plan: &Plan, t: i64) -> Vec<f64> {
        let mut out = vec![f64::NAN; plan.n_features()];
        self.fill(plan, t.max(self.settled), &mut out, None);
        out
    }

    fn fill(&self, plan: &Plan, t: i64, out: &mut [f64], mask: Option<&[bool]>) {
        let wanted = |i: usize| mask.is_none_or(|m| m.get(i).copied().unwrap_or(true));
        // groups with at least one wanted output
        let group_wanted = |gi: usize| {
            mask.is_none()
                || plan
                    .outputs
                    .iter()
                    .enumerate()
                    .any(|(i, o)| o.group == gi && wanted(i))
        };
        let buf = &self.buf;
        let none = (0u64, 0u64);
        // `buf.seek` with its first probe inline: the usual answer (no rows past the settled
        // region, a window start already at `from`) without a call.
        let end = buf.end();
        let seek = |from: u64, t: i64| {
            if from >= end || buf.ts(from) >= t {
                from
            } else {
                buf.seek(from, t)
            }
        };
        // Per group, the rows that correct its accumulators to the window of a query at `t`
        // (plain pushes: collecting them through iterator adapters cost a call per group).
        let mut corrs: SmallVec<[Corr; 4]> = SmallVec::new();
        // No group needs a correction: a read at the settled point (every backfill read).
        let mut quiet = true;
        for (g, gp) in self.groups.iter().zip(&plan.groups) {
            let hi_q = seek(g.hi, t);
            let c = if gp.hop.is_some() {
                // tiles cover the settled part; buffered rows from the window start on
                let a0 = buf.seek(g.hi, gp.start(t));
                let a1 = hi_q.max(a0);
                quiet = false;
                Corr {
                    settled_add: (a0, a1),
                    rem: [none, none],
                    add: (a0, a1),
                    lo_q: a0,
                    hi_q: a1,
                }
            } else {
                match gp.window {
                    Some(w) => {
                        let start = t.saturating_sub(w);
                        let lo_q = seek(g.lo, start);
                        // eager region: rows from e_start on; the window: start..t. An
                        // eager region advanced past `t` (`advance_eager`) is taken out
                        // whole and the window's rows added: no row is both added and removed.
                        let (rem0, add) = if start >= g.e_start {
                            ((g.e_lo, lo_q), none)
                        } else {
                            (none, (lo_q, g.e_lo.min(hi_q)))
                        };
                        Corr {
                            settled_add: (g.hi.max(lo_q), hi_q),
                            rem: [rem0, (hi_q.max(g.e_lo), end)],
                            add,
                            lo_q,
                            hi_q,
                        }
                    }
                    None => Corr {
                        settled_add: (g.hi, hi_q),
                        rem: [(hi_q, end), none],
                        add: none,
                        lo_q: 0,
                        hi_q,
                    },
                }
            };
            quiet &= c.is_empty();
            corrs.push(c);
        }
        let rows = move |r: (u64, u64)| buf.rows().range(r);
        // Invertible accumulators corrected to the query window, once per accumulator. Extremes,
        // distinct counts, quantiles, decayed sums and first/last read the corrections directly.
        // Accumulators that differ from the stored ones for this query: (group, index, value).
        // Usually none (a query at the settled point or at "now" has no corrections).
        let mut views: SmallVec<[(usize, usize, Acc); 4]> = SmallVec::new();
        if !quiet {
            for (gi, ((g, gp), c)) in self.groups.iter().zip(&plan.groups).zip(&corrs).enumerate() {
                if !group_wanted(gi) {
                    continue;
                }
                if let Some(h) = gp.hop {
                    self.tile_views(plan, gi, t, h, buf.rows().run(c.add), &mut views);
                    continue;
                }
                if c.rem.iter().chain([&c.add]).all(|r| r.0 >= r.1) {
                    continue;
                }
                for (i, (acc, ap)) in g.accs.iter().zip(&gp.accs).enumerate() {
                    if !acc.invertible() {
                        continue;
                    }
                    let mut acc = acc.clone();
                    for row in rows(c.rem[0]).chain(rows(c.rem[1])) {
                        acc.apply(ap, row, -1, false);
                    }
                    for row in rows(c.add) {
                        acc.apply(ap, row, 1, false);
                    }
                    views.push((gi, i, acc));
                }
            }
        }
        let var_cache = crate::agg::VarCache::default();
        let extremes_cache = RefCell::new(SmallVec::new());
        let mut stored: SmallVec<[&[Acc]; 4]> = SmallVec::new();
        for g in &self.groups {
            stored.push(g.accs.as_slice());
        }
        let rows = buf.rows();
        // Events of group `gi`'s settled tiles with id `>= first` (one closure for every group).
        let (tile_rows, stride) = (&self.tile_rows, buf.stride);
        let tile_events = |gi: usize, first: i64| -> u64 {
            let rows = match plan.groups[gi].hop {
                Some(h) => tile_rows.len(stride) - tile_rows.seek(first.saturating_mul(h), stride),
                None => 0,
            };
            rows as u64
                + self.groups[gi]
                    .tiles
                    .iter()
                    .filter(|tl| tl.id >= first)
                    .map(|tl| tl.events)
                    .sum::<u64>()
        };
        // One view per group, shared by the group's outputs (built per output, the views cost
        // ~50 instructions each: a quarter of an 18-feature read at the settled point).
        let mut group_views: SmallVec<[View<'_>; 4]> = SmallVec::new();
        for (gi, ((g, gp), corr)) in self.groups.iter().zip(&plan.groups).zip(&corrs).enumerate() {
            group_views.push(View {
                t,
                window: gp.window,
                hop: gp.hop,
                plans: &gp.accs,
                rows,
                corr,
                group: gi,
                accs: &g.accs,
                shared: &gp.shared,
                stored: &stored,
                views: &views,
                tile_events: &tile_events,
                var_cache: &var_cache,
                extremes_cache: &extremes_cache,
                texts: &self.texts,
            });
        }
        match mask {
            None => {
                for (o, slot) in plan.outputs.iter().zip(out.iter_mut()) {
                    *slot = (o.eval)(&group_views[o.group], o);
                }
            }
            Some(_) => {
                for (i, (o, slot)) in plan.outputs.iter().zip(out.iter_mut()).enumerate() {
                    if wanted(i) {
                        *slot = (o.eval)(&group_views[o.group], o);
                    }
                }
            }
        }
    }

    /// Whether a deserialized state fits `plan` and its own invariants (guards snapshot loading
    /// against documents that decode but were not written by this engine).
    pub fn consistent_with(&self, plan: &Plan) -> bool {
        let b = &self.buf;
        if b.stride != 1 + plan.columns.len()
            || b.data.len() % b.stride != 0
            || b.off > b.data.len() / b.stride
        {
            return false;
        }
        let end = b.end();
        let sorted = (b.base + 1..end).all(|p| b.ts(p - 1) <= b.ts(p));
        if !sorted || self.groups.len() != plan.groups.len() {
            return false;
        }
        // every string word stored has its string
        let texts_ok = plan.columns.iter().enumerate().all(|(c, cp)| {
            cp.kind != ColKind::Text
                || (b.base..end).all(|p| {
                    let w = b.row(p)[1 + c];
                    w == NULL || self.texts.get(w).is_some()
                })
        });
        if !texts_ok || self.acc_words().any(|w| self.texts.get(w).is_none()) {
            return false;
        }
        // tile rows: whole rows, in time order, settled, of tiled groups that all settled up to
        // the same buffered row
        let tr = &self.tile_rows;
        let n = tr.words().len() / b.stride;
        let mut tiled_hi = plan
            .groups
            .iter()
            .zip(&self.groups)
            .filter(|(gp, _)| gp.hop.is_some())
            .map(|(_, g)| g.hi);
        let rows_ok = tr.words().len() % b.stride == 0
            && (1..n).all(|i| tr.ts(i - 1, b.stride) <= tr.ts(i, b.stride))
            && (n == 0 || tr.ts(n - 1, b.stride) < self.settled)
            && match tiled_hi.next() {
                Some(hi) => tiled_hi.all(|h| h == hi),
                None => n == 0,
            };
        if !rows_ok {
            return false;
        }
        self.groups.iter().zip(&plan.groups).all(|(g, gp)| {
            let bounds = g.lo <= g.hi
                && g.hi <= end
                && (gp.window.is_none() || gp.hop.is_some() || (g.lo <= g.e_lo && g.e_lo <= end))
                && (gp.window.is_none() || g.lo >= b.base)
                && (gp.window.is_some() || g.hi >= b.base);
            let tiles_ok = (gp.hop.is_some() || g.tiles.is_empty())
                && g.tiles.iter().all(|t| {
                    t.accs.len() == gp.accs.len()
                        && t.accs.iter().zip(&gp.accs).all(|(a, p)| a.same_kind(p))
                })
                && g.tiles
                    .iter()
                    .zip(g.tiles.iter().skip(1))
                    .all(|(a, b)| a.id < b.id);
            bounds
                && tiles_ok
                && g.accs.len() == gp.accs.len()
                && g.accs.iter().zip(&gp.accs).all(|(a, p)| a.same_kind(p))
        })
    }

    /// Approximate bytes held by this key's state.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.buf.bytes()
            + self.texts.bytes()
            + self.tile_rows.heap_bytes()
            + self
                .groups
                .iter()
                .map(|g| {
                    std::mem::size_of::<Group>()
                        + g.accs.iter().map(Acc::bytes).sum::<usize>()
                        + g.tiles
                            .iter()
                            .map(|t| 24 + t.accs.iter().map(Acc::bytes).sum::<usize>())
                            .sum::<usize>()
                })
                .sum::<usize>()
    }
}

impl KeyState {
    /// A state stored by snapshot format 1 (`online::snapshot`), whose groups were
    /// `(lo, hi, accs, tiles)`, in today's layout: format 1 kept every accumulator over the
    /// settled region only, so the eager region starts where the settled window starts and the
    /// buffered rows past the settled point are folded in. `None` if the state does not fit
    /// `plan`.
    pub(crate) fn from_v1(
        plan: &Plan,
        settled: i64,
        last_ts: i64,
        buf: Buf,
        groups: Vec<(u64, u64, Vec<Acc>, VecDeque<Tile>)>,
    ) -> Option<KeyState> {
        if groups.len() != plan.groups.len() {
            return None;
        }
        let mut state = KeyState {
            texts: Texts::default(),
            settled,
            last_ts,
            buf,
            groups: groups
                .into_iter()
                .zip(&plan.groups)
                .map(|((lo, hi, accs, tiles), gp)| Group {
                    lo,
                    hi,
                    e_lo: lo,
                    e_start: gp.window.map_or(i64::MIN, |w| settled.saturating_sub(w)),
                    accs,
                    tiles,
                    run_from: i64::MIN,
                })
                .collect(),
            tile_rows: TileRows::default(),
        };
        if !state.consistent_with(plan) {
            return None;
        }
        let end = state.buf.end();
        for (g, gp) in state.groups.iter_mut().zip(&plan.groups) {
            if gp.hop.is_some() {
                continue;
            }
            for p in g.hi..end {
                let row = state.buf.row(p);
                for (acc, ap) in g.accs.iter_mut().zip(&gp.accs) {
                    if acc.eager() {
                        acc.apply(ap, row, 1, false);
                    }
                }
            }
        }
        Some(state)
    }
}

#[cfg(test)]
impl KeyState {
    /// A state in the form snapshot format 4 stored (after [`Self::with_summary_tiles`]).
    pub(crate) fn to_v4(&self) -> KeyStateV4 {
        assert_eq!(
            self.tile_rows.words().len(),
            0,
            "tile rows have no format 4 form"
        );
        KeyStateV4 {
            settled: self.settled,
            last_ts: self.last_ts,
            buf: self.buf.clone(),
            groups: self
                .groups
                .iter()
                .map(|g| GroupV4 {
                    lo: g.lo,
                    hi: g.hi,
                    e_lo: g.e_lo,
                    e_start: g.e_start,
                    accs: g.accs.clone(),
                    tiles: g.tiles.clone(),
                })
                .collect(),
            texts: self.texts.clone(),
        }
    }
}

#[cfg(test)]
mod tests;

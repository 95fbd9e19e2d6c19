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

use std::collections::{BTreeMap, VecDeque};

use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::error::{Error, Result};
use crate::exact::{
    dd_div, div_exact, mul_u128, mul_u192_u64, shl256, sub256, u256_pair, ExactSum,
};
use crate::plan::{AccPlan, OutKind, Plan};
use crate::time::floor_div;

/// The stored value of a null (a NaN pattern: real NaNs never reach the state).
pub const NULL: u64 = 0x7FF8_0000_DEAD_0001;

#[inline]
fn num(v: u64) -> Option<f64> {
    (v != NULL).then(|| f64::from_bits(v))
}

/// Events of one key, sorted by time, stored row-major with a movable front.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Buf {
    stride: usize,
    data: Vec<u64>,
    /// Dead rows at the front of `data`.
    off: usize,
    /// Absolute position of the first live row.
    base: u64,
}

impl Buf {
    fn new(stride: usize) -> Buf {
        Buf {
            stride,
            data: Vec::new(),
            off: 0,
            base: 0,
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
        if self.off > 32 && self.off * 2 >= self.data.len() / self.stride {
            self.data.drain(0..self.off * self.stride);
            self.off = 0;
        }
        if self.is_empty() && self.data.capacity() > 64 {
            self.data.shrink_to(16 * self.stride);
        }
    }
    fn bytes(&self) -> usize {
        std::mem::size_of::<Self>() + 8 * self.data.capacity()
    }
    /// Empty, as new, keeping the allocation.
    fn clear(&mut self) {
        self.data.clear();
        self.off = 0;
        self.base = 0;
    }
}

/// Bucket of a value for quantiles: sign, exponent and the top 7 mantissa bits.
#[inline]
fn bucket(x: f64) -> i32 {
    if x == 0.0 {
        return 0;
    }
    let b = ((x.abs().to_bits() >> 45) + 1) as i32;
    if x < 0.0 {
        -b
    } else {
        b
    }
}

/// The midpoint of a bucket: relative error at most 2^-8 for every value in it.
#[inline]
fn bucket_value(k: i32) -> f64 {
    if k == 0 {
        return 0.0;
    }
    let m = f64::from_bits(((k.unsigned_abs() as u64 - 1) << 45) | (1u64 << 44));
    if k < 0 {
        -m
    } else {
        m
    }
}

const DECAY_PERIOD_HALF_LIVES: i64 = 32;
const DECAY_MAX_AGE_PERIODS: i64 = 40;

#[inline]
fn decay_cell(ts: i64, h: i64) -> (i64, f64) {
    let p = DECAY_PERIOD_HALF_LIVES * h;
    let c = floor_div(ts, p);
    // ts - c * p, in 0..p
    let offset = ts.rem_euclid(p) as f64;
    (c, libm::exp2(offset / h as f64))
}

#[inline]
fn total_lt(a: (i64, f64), b: (i64, f64)) -> bool {
    a.0 < b.0 || (a.0 == b.0 && a.1.total_cmp(&b.1).is_lt())
}

/// One accumulator's state over the settled region.
/// Decayed-sum cells (exact sums of `x * 2^(offset / h)`) by period, oldest first: one or two
/// per window, so inline, where a B-tree spent a ~700-byte node per key (and per tile).
/// Serialized as the map it replaced (the same bincode bytes: a length, then the pairs).
#[derive(Clone, Debug, Default)]
pub struct DecayCells(SmallVec<[(i64, ExactSum); 1]>);

impl DecayCells {
    /// The cell of period `c`, created empty if missing.
    fn entry(&mut self, c: i64) -> &mut ExactSum {
        let i = match self.0.binary_search_by_key(&c, |e| e.0) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (c, ExactSum::new()));
                i
            }
        };
        &mut self.0[i].1
    }

    fn remove(&mut self, c: i64) {
        if let Ok(i) = self.0.binary_search_by_key(&c, |e| e.0) {
            self.0.remove(i);
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(i64) -> bool) {
        self.0.retain(|e| keep(e.0));
    }

    fn iter(&self) -> impl Iterator<Item = (i64, &ExactSum)> {
        self.0.iter().map(|(c, e)| (*c, e))
    }

    /// Cells of periods `lo..=hi`, oldest first.
    fn range(&self, lo: i64, hi: i64) -> impl Iterator<Item = (i64, &ExactSum)> {
        let from = self.0.partition_point(|e| e.0 < lo);
        let to = self.0.partition_point(|e| e.0 <= hi);
        self.0[from..to.max(from)].iter().map(|(c, e)| (*c, e))
    }

    fn bytes(&self) -> usize {
        let heap = if self.0.spilled() {
            self.0.capacity() * std::mem::size_of::<(i64, ExactSum)>()
        } else {
            0
        };
        heap + self
            .0
            .iter()
            .map(|(_, e)| e.bytes() - std::mem::size_of::<ExactSum>())
            .sum::<usize>()
    }
}

impl Serialize for DecayCells {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(c, e)| (c, e)))
    }
}

impl<'de> Deserialize<'de> for DecayCells {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let map = BTreeMap::<i64, ExactSum>::deserialize(d)?;
        Ok(DecayCells(map.into_iter().collect()))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Acc {
    NonNull(i64),
    Moments {
        n: i64,
        s1: ExactSum,
        s2: ExactSum,
    },
    /// Monotonic deque of (ts, value): increasing values for min, decreasing for max.
    Extreme(VecDeque<(i64, f64)>),
    Distinct(HashMap<u64, u32>),
    Sketch {
        n: i64,
        buckets: BTreeMap<i32, u32>,
    },
    Decay(DecayCells),
    Edges {
        first: Option<(i64, f64)>,
        last: Option<(i64, f64)>,
    },
}

impl Acc {
    fn new(p: &AccPlan) -> Acc {
        match p {
            AccPlan::NonNull { .. } => Acc::NonNull(0),
            AccPlan::Moments { .. } => Acc::Moments {
                n: 0,
                s1: ExactSum::new(),
                s2: ExactSum::new(),
            },
            AccPlan::Extreme { .. } => Acc::Extreme(VecDeque::new()),
            AccPlan::Distinct { .. } => Acc::Distinct(HashMap::new()),
            AccPlan::Sketch { .. } => Acc::Sketch {
                n: 0,
                buckets: BTreeMap::new(),
            },
            AccPlan::Decay { .. } => Acc::Decay(DecayCells::default()),
            AccPlan::Edges { .. } => Acc::Edges {
                first: None,
                last: None,
            },
        }
    }

    /// Empty, as `Acc::new(p)`, keeping allocations.
    fn reset(&mut self, p: &AccPlan) {
        match self {
            Acc::NonNull(n) => *n = 0,
            Acc::Moments { n, s1, s2 } => {
                *n = 0;
                *s1 = ExactSum::new();
                *s2 = ExactSum::new();
            }
            Acc::Extreme(dq) => dq.clear(),
            Acc::Distinct(m) => m.clear(),
            Acc::Sketch { n, buckets } => {
                *n = 0;
                buckets.clear();
            }
            Acc::Decay(cells) => cells.0.clear(),
            Acc::Edges { .. } => *self = Acc::new(p),
        }
    }

    /// Accumulators that views correct by applying rows; the others are corrected by the output code.
    fn invertible(&self) -> bool {
        matches!(self, Acc::NonNull(_) | Acc::Moments { .. })
    }

    /// Accumulators that are functions of an event multiset with an inverse (every event can be
    /// folded out again): folded in when an event arrives, in any order (the eager region).
    /// The others (monotonic deques, first/last edges) need events in time order and are folded
    /// only into the settled region.
    fn eager(&self) -> bool {
        matches!(
            self,
            Acc::NonNull(_)
                | Acc::Moments { .. }
                | Acc::Distinct(_)
                | Acc::Sketch { .. }
                | Acc::Decay(_)
        )
    }

    /// Fold a summary of other events in (tiles). Extremes are single-value summaries here.
    fn merge(&mut self, p: &AccPlan, other: &Acc) {
        match (self, other) {
            (Acc::NonNull(a), Acc::NonNull(b)) => *a += b,
            (
                Acc::Moments { n, s1, s2 },
                Acc::Moments {
                    n: n2,
                    s1: t1,
                    s2: t2,
                },
            ) => {
                *n += n2;
                s1.add_assign(t1);
                s2.add_assign(t2);
            }
            (Acc::Extreme(dq), Acc::Extreme(o)) => {
                if let Some(&(ts, v)) = o.front() {
                    let max = matches!(p, AccPlan::Extreme { max: true, .. });
                    let better = dq.front().is_none_or(|&(_, cur)| {
                        let c = v.total_cmp(&cur);
                        if max {
                            c.is_gt()
                        } else {
                            c.is_lt()
                        }
                    });
                    if better {
                        dq.clear();
                        dq.push_back((ts, v));
                    }
                }
            }
            (Acc::Distinct(m), Acc::Distinct(o)) => {
                for (k, c) in o {
                    *m.entry(*k).or_insert(0) += c;
                }
            }
            (Acc::Sketch { n, buckets }, Acc::Sketch { n: n2, buckets: b2 }) => {
                *n += n2;
                for (k, c) in b2 {
                    *buckets.entry(*k).or_insert(0) += c;
                }
            }
            (Acc::Decay(cells), Acc::Decay(o)) => {
                for (c, e) in o.iter() {
                    cells.entry(c).add_assign(e);
                }
            }
            (
                Acc::Edges { first, last },
                Acc::Edges {
                    first: f2,
                    last: l2,
                },
            ) => {
                if let Some(f) = f2 {
                    if first.is_none_or(|cur| total_lt(*f, cur)) {
                        *first = Some(*f);
                    }
                }
                if let Some(l) = l2 {
                    if last.is_none_or(|cur| total_lt(cur, *l)) {
                        *last = Some(*l);
                    }
                }
            }
            _ => {}
        }
    }

    /// Fold one event in (`sign = 1`) or out (`sign = -1`). Extremes are expired by time.
    fn apply(&mut self, p: &AccPlan, row: &[u64], sign: i64, lifetime: bool) {
        let ts = row[0] as i64;
        let val = |c: usize| row[1 + c];
        match (self, p) {
            (Acc::NonNull(n), AccPlan::NonNull { col }) if val(*col) != NULL => {
                *n += sign;
            }
            (Acc::Moments { n, s1, s2 }, AccPlan::Moments { col, squares }) => {
                if let Some(x) = num(val(*col)) {
                    *n += sign;
                    ExactSum::fold_moment(s1, squares.then_some(s2), x, sign < 0);
                }
            }
            (Acc::Extreme(dq), AccPlan::Extreme { col, max }) => {
                if sign < 0 {
                    return;
                }
                if let Some(x) = num(val(*col)) {
                    let dominated = |old: f64| {
                        let o = old.total_cmp(&x);
                        if *max {
                            o.is_le()
                        } else {
                            o.is_ge()
                        }
                    };
                    if lifetime {
                        if dq.front().is_none_or(|&(_, old)| dominated(old)) {
                            dq.clear();
                            dq.push_back((ts, x));
                        }
                    } else {
                        while dq.back().is_some_and(|&(_, old)| dominated(old)) {
                            dq.pop_back();
                        }
                        dq.push_back((ts, x));
                    }
                }
            }
            (Acc::Distinct(map), AccPlan::Distinct { col }) => {
                let v = val(*col);
                if v != NULL {
                    let key = if v == (-0.0f64).to_bits() { 0 } else { v };
                    if sign > 0 {
                        *map.entry(key).or_insert(0) += 1;
                    } else if let Some(c) = map.get_mut(&key) {
                        *c -= 1;
                        if *c == 0 {
                            map.remove(&key);
                        }
                    }
                }
            }
            (Acc::Sketch { n, buckets }, AccPlan::Sketch { col }) => {
                if let Some(x) = num(val(*col)) {
                    let b = bucket(x);
                    *n += sign;
                    if sign > 0 {
                        *buckets.entry(b).or_insert(0) += 1;
                    } else if let Some(c) = buckets.get_mut(&b) {
                        *c -= 1;
                        if *c == 0 {
                            buckets.remove(&b);
                        }
                    }
                }
            }
            (Acc::Decay(cells), AccPlan::Decay { col, half_life }) => {
                if let Some(x) = num(val(*col)) {
                    let (c, w) = decay_cell(ts, *half_life);
                    let term = x * w;
                    let cell = cells.entry(c);
                    if sign > 0 {
                        cell.add(term);
                    } else {
                        cell.sub(term);
                        if cell.is_zero() {
                            cells.remove(c);
                        }
                    }
                }
            }
            (Acc::Edges { first, last }, AccPlan::Edges { col }) => {
                let x = match col {
                    Some(c) => match num(val(*c)) {
                        Some(x) => x,
                        None => return,
                    },
                    None => 0.0,
                };
                if first.is_none_or(|f| total_lt((ts, x), f)) {
                    *first = Some((ts, x));
                }
                if last.is_none_or(|l| total_lt(l, (ts, x))) {
                    *last = Some((ts, x));
                }
            }
            _ => {}
        }
    }

    fn bytes(&self) -> usize {
        let base = std::mem::size_of::<Acc>();
        base + match self {
            Acc::NonNull(_) => 0,
            Acc::Moments { s1, s2, .. } => {
                s1.bytes() + s2.bytes() - 2 * std::mem::size_of::<ExactSum>()
            }
            Acc::Extreme(dq) => dq.capacity() * 16,
            Acc::Distinct(m) => m.capacity() * 13 + 16,
            Acc::Sketch { buckets, .. } => buckets.len() * 24,
            Acc::Decay(cells) => cells.bytes(),
            Acc::Edges { .. } => 0,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Group {
    /// Absolute positions: the settled region is rows `lo..hi` (lifetime: everything before `hi`).
    lo: u64,
    hi: u64,
    /// Sliding windows: the eager region is rows `e_lo..` (every row with `ts >= e_start`,
    /// including rows not yet settled); lifetime: every row. `e_start <= settled`.
    e_lo: u64,
    e_start: i64,
    /// Eager accumulators cover the eager region, the others the settled region.
    accs: Vec<Acc>,
    /// Tiled windows: one summary per tile of settled events, oldest first, only tiles that a
    /// query at or after the settled point can still see (`accs` is unused).
    tiles: VecDeque<Tile>,
}

/// Rows (absolute position ranges `from..to`) that correct a group's state to one query window.
struct Corr {
    /// Buffered rows inside the window past the settled region (extremes, first/last scan them).
    settled_add: (u64, u64),
    /// Rows to fold out of / into the eager accumulators (tiled groups: into the tile merge).
    rem: [(u64, u64); 2],
    add: (u64, u64),
    /// The query window's rows: `lo_q..hi_q` (lifetime: `hi_q` only).
    lo_q: u64,
    hi_q: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Tile {
    id: i64,
    events: u64,
    accs: Vec<Acc>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyState {
    pub settled: i64,
    /// Latest event time seen for this key (for TTL).
    pub last_ts: i64,
    buf: Buf,
    groups: Vec<Group>,
}

impl KeyState {
    pub fn new(plan: &Plan, settled: i64) -> KeyState {
        KeyState {
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
                })
                .collect(),
        }
    }

    /// Back to `KeyState::new(plan, settled)` for another key, keeping allocations (backfill
    /// workers reuse one state for all their keys).
    pub fn reset(&mut self, plan: &Plan, settled: i64) {
        self.settled = settled;
        self.last_ts = i64::MIN;
        self.buf.clear();
        for (g, gp) in self.groups.iter_mut().zip(&plan.groups) {
            g.lo = 0;
            g.hi = 0;
            g.e_lo = 0;
            g.e_start = i64::MIN;
            g.tiles.clear();
            for (acc, ap) in g.accs.iter_mut().zip(&gp.accs) {
                acc.reset(ap);
            }
        }
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
                if acc.eager() {
                    acc.apply(ap, row, 1, false);
                }
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
        for (g, gp) in self.groups.iter_mut().zip(&plan.groups) {
            if let (Some(w), Some(h)) = (gp.window, gp.hop) {
                while g.hi < self.buf.end() && self.buf.ts(g.hi) < s {
                    let row = self.buf.row(g.hi);
                    let id = floor_div(row[0] as i64, h);
                    if g.tiles.back().map(|t| t.id) != Some(id) {
                        g.tiles.push_back(Tile {
                            id,
                            events: 0,
                            accs: gp.accs.iter().map(Acc::new).collect(),
                        });
                    }
                    if let Some(tile) = g.tiles.back_mut() {
                        tile.events += 1;
                        for (acc, ap) in tile.accs.iter_mut().zip(&gp.accs) {
                            acc.apply(ap, row, 1, true);
                        }
                    }
                    g.hi += 1;
                }
                g.lo = g.hi;
                let first_needed = floor_div(s, h).saturating_sub(w / h);
                while g.tiles.front().is_some_and(|t| t.id < first_needed) {
                    g.tiles.pop_front();
                }
                keep_from = keep_from.min(g.hi);
                continue;
            }
            let lifetime = gp.window.is_none();
            let end = self.buf.end();
            while g.hi < end && self.buf.ts(g.hi) < s {
                let row = self.buf.row(g.hi);
                for (acc, ap) in g.accs.iter_mut().zip(&gp.accs) {
                    if !acc.eager() {
                        acc.apply(ap, row, 1, lifetime);
                    }
                }
                g.hi += 1;
            }
            match gp.window {
                Some(w) => {
                    let start = s.saturating_sub(w);
                    g.lo = self.buf.seek(g.lo, start).min(g.hi);
                    for acc in g.accs.iter_mut() {
                        if let Acc::Extreme(dq) = acc {
                            while dq.front().is_some_and(|&(ts, _)| ts < start) {
                                dq.pop_front();
                            }
                        }
                    }
                    let e_start = s
                        .saturating_add(lead.saturating_sub(w).min(0))
                        .max(g.e_start);
                    while g.e_lo < end && self.buf.ts(g.e_lo) < e_start {
                        let row = self.buf.row(g.e_lo);
                        for (acc, ap) in g.accs.iter_mut().zip(&gp.accs) {
                            if acc.eager() {
                                acc.apply(ap, row, -1, false);
                            }
                        }
                        g.e_lo += 1;
                    }
                    g.e_start = e_start;
                    keep_from = keep_from.min(g.lo);
                }
                None => {
                    g.lo = g.hi;
                    keep_from = keep_from.min(g.hi);
                    for (acc, ap) in g.accs.iter_mut().zip(&gp.accs) {
                        if let (Acc::Decay(cells), AccPlan::Decay { half_life, .. }) = (acc, ap) {
                            let (cs, _) = decay_cell(s, *half_life);
                            cells.retain(|c| cs - c <= DECAY_MAX_AGE_PERIODS);
                        }
                    }
                }
            }
        }
        self.buf.evict_before(keep_from);
        self.settled = s;
    }

    /// How many rows settling to `s` would fold into or out of the accumulators: the rows a
    /// query's corrections would no longer have to walk once the key is settled.
    pub fn settle_backlog(&self, plan: &Plan, s: i64, lead: i64) -> u64 {
        if s <= self.settled {
            return 0;
        }
        let mut n = 0;
        for (g, gp) in self.groups.iter().zip(&plan.groups) {
            n += self.buf.seek(g.hi, s) - g.hi;
            if let (Some(w), None) = (gp.window, gp.hop) {
                let e_start = s
                    .saturating_add(lead.saturating_sub(w).min(0))
                    .max(g.e_start);
                n += self.buf.seek(g.e_lo, e_start) - g.e_lo;
            }
        }
        n
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
                "cannot answer at {t} ns: this key's state is settled up to {} ns (watermark - allowed_lateness); raise allowed_lateness to query further back",
                self.settled
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
        // Per group, the rows that correct its accumulators to the window of a query at `t`.
        let corrs: SmallVec<[Corr; 4]> = self
            .groups
            .iter()
            .zip(&plan.groups)
            .map(|(g, gp)| {
                let hi_q = buf.seek(g.hi, t);
                if gp.hop.is_some() {
                    // tiles cover the settled part; buffered rows from the window start on
                    let a0 = buf.seek(g.hi, gp.start(t));
                    let a1 = hi_q.max(a0);
                    return Corr {
                        settled_add: (a0, a1),
                        rem: [none, none],
                        add: (a0, a1),
                        lo_q: a0,
                        hi_q: a1,
                    };
                }
                match gp.window {
                    Some(w) => {
                        let start = t.saturating_sub(w);
                        let lo_q = buf.seek(g.lo, start);
                        // eager region: rows from e_start on; the window: start..t
                        let (rem0, add) = if start >= g.e_start {
                            ((g.e_lo, lo_q), none)
                        } else {
                            (none, (lo_q, g.e_lo))
                        };
                        Corr {
                            settled_add: (g.hi.max(lo_q), hi_q),
                            rem: [rem0, (hi_q, buf.end())],
                            add,
                            lo_q,
                            hi_q,
                        }
                    }
                    None => Corr {
                        settled_add: (g.hi, hi_q),
                        rem: [(hi_q, buf.end()), none],
                        add: none,
                        lo_q: 0,
                        hi_q,
                    },
                }
            })
            .collect();
        let rows = move |r: (u64, u64)| (r.0..r.1).map(move |p| buf.row(p));
        // Invertible accumulators corrected to the query window, once per accumulator. Extremes,
        // distinct counts, quantiles, decayed sums and first/last read the corrections directly.
        // Accumulators that differ from the stored ones for this query: (group, index, value).
        // Usually none (a query at the settled point or at "now" has no corrections).
        let mut views: SmallVec<[(usize, usize, Acc); 4]> = SmallVec::new();
        for (gi, ((g, gp), c)) in self.groups.iter().zip(&plan.groups).zip(&corrs).enumerate() {
            if !group_wanted(gi) {
                continue;
            }
            if let Some(h) = gp.hop {
                // merge the tiles inside the window, then add the buffered rows
                let first = floor_div(t, h).saturating_sub(gp.window.unwrap_or(0) / h);
                for (i, ap) in gp.accs.iter().enumerate() {
                    let mut acc = Acc::new(ap);
                    for tile in g.tiles.iter().filter(|tl| tl.id >= first) {
                        acc.merge(ap, &tile.accs[i]);
                    }
                    if acc.invertible() {
                        for row in rows(c.add) {
                            acc.apply(ap, row, 1, true);
                        }
                    }
                    views.push((gi, i, acc));
                }
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
        let mut var_cache: SmallVec<[((usize, usize), f64); 4]> = SmallVec::new();
        for (i, (o, slot)) in plan.outputs.iter().zip(out.iter_mut()).enumerate() {
            if !wanted(i) {
                continue;
            }
            let g = &self.groups[o.group];
            let gp = &plan.groups[o.group];
            let c = &corrs[o.group];
            let (lo_q, hi_q) = (c.lo_q, c.hi_q);
            let (a0, a1) = c.settled_add;
            // corrections of the eager (or tile) accumulators
            let removed = rows(c.rem[0]).chain(rows(c.rem[1]));
            let added = rows(c.add);
            let adjusted = |i: usize| -> &Acc {
                views
                    .iter()
                    .find(|v| v.0 == o.group && v.1 == i)
                    .map_or(&g.accs[i], |v| &v.2)
            };
            *slot = match &o.kind {
                OutKind::Count => {
                    // Absolute positions count every row ever stored, evicted ones included,
                    // so for a lifetime group `hi` is the number of settled events.
                    if let Some(h) = gp.hop {
                        let first = floor_div(t, h).saturating_sub(gp.window.unwrap_or(0) / h);
                        let settled: u64 = g
                            .tiles
                            .iter()
                            .filter(|tl| tl.id >= first)
                            .map(|tl| tl.events)
                            .sum();
                        (settled + (a1 - a0)) as f64
                    } else if gp.window.is_none() {
                        // every row before `hi_q`, evicted ones included
                        hi_q as f64
                    } else {
                        (hi_q - lo_q) as f64
                    }
                }
                OutKind::CountCol(i) => match adjusted(*i) {
                    Acc::NonNull(n) => *n as f64,
                    _ => f64::NAN,
                },
                OutKind::Var(i) | OutKind::Std(i) => {
                    // var and std of one column share one exact computation
                    let var = match var_cache.iter().find(|c| c.0 == (o.group, *i)) {
                        Some(c) => c.1,
                        None => {
                            let v = match adjusted(*i) {
                                Acc::Moments { n, s1, s2 } => variance(*n, s1, s2),
                                _ => f64::NAN,
                            };
                            var_cache.push(((o.group, *i), v));
                            v
                        }
                    };
                    if matches!(o.kind, OutKind::Std(_)) {
                        var.sqrt()
                    } else {
                        var
                    }
                }
                OutKind::Sum(i) | OutKind::Mean(i) => match adjusted(*i) {
                    Acc::Moments { n, s1, s2 } => moments_output(&o.kind, *n, s1, s2),
                    _ => f64::NAN,
                },
                OutKind::Min(i) | OutKind::Max(i) => {
                    let max = matches!(o.kind, OutKind::Max(_));
                    let col = match &gp.accs[*i] {
                        AccPlan::Extreme { col, .. } => *col,
                        _ => 0,
                    };
                    // summaries (lifetime, tiles) are already restricted to the window
                    let start = if gp.summarizing() {
                        i64::MIN
                    } else {
                        gp.start(t)
                    };
                    let mut best: Option<f64> = match adjusted(*i) {
                        Acc::Extreme(dq) => {
                            let k = dq.partition_point(|&(ts, _)| ts < start);
                            dq.get(k).map(|&(_, v)| v)
                        }
                        _ => None,
                    };
                    for row in rows(c.settled_add) {
                        if let Some(x) = num(row[1 + col]) {
                            let better = best.is_none_or(|b| {
                                let c = x.total_cmp(&b);
                                if max {
                                    c.is_gt()
                                } else {
                                    c.is_lt()
                                }
                            });
                            if better {
                                best = Some(x);
                            }
                        }
                    }
                    best.unwrap_or(f64::NAN)
                }
                OutKind::First { col, edges } => {
                    if let Some(e) = edges {
                        let settled_first = match adjusted(*e) {
                            Acc::Edges { first, .. } => *first,
                            _ => None,
                        };
                        match settled_first {
                            Some((_, v)) => v,
                            None => scan_first(buf, a0, a1, *col),
                        }
                    } else {
                        scan_first(buf, lo_q, hi_q, *col)
                    }
                }
                OutKind::Last { col, edges } => {
                    let v = scan_last(
                        buf,
                        if edges.is_some() { a0 } else { lo_q },
                        hi_q,
                        Some(*col),
                    );
                    match (v, edges) {
                        (Some((_, v)), _) => v,
                        (None, Some(e)) => match adjusted(*e) {
                            Acc::Edges {
                                last: Some((_, v)), ..
                            } => *v,
                            _ => f64::NAN,
                        },
                        (None, None) => f64::NAN,
                    }
                }
                OutKind::TimeSinceLast { edges } => {
                    let from = if edges.is_some() { a0 } else { lo_q };
                    let last_ts = if hi_q > from {
                        Some(buf.ts(hi_q - 1))
                    } else {
                        match edges.map(&adjusted) {
                            Some(Acc::Edges {
                                last: Some((ts, _)),
                                ..
                            }) => Some(*ts),
                            _ => None,
                        }
                    };
                    match last_ts {
                        Some(ts) => (t as i128 - ts as i128) as f64 / 1e9,
                        None => f64::NAN,
                    }
                }
                OutKind::Distinct(i) => match adjusted(*i) {
                    Acc::Distinct(map) => {
                        let col = match &gp.accs[*i] {
                            AccPlan::Distinct { col } => *col,
                            _ => 0,
                        };
                        distinct_output(map, removed, added, col)
                    }
                    _ => f64::NAN,
                },
                OutKind::Quantile(i, q) => match (adjusted(*i), &gp.accs[*i]) {
                    (Acc::Sketch { n, buckets }, AccPlan::Sketch { col }) => {
                        quantile_output(*n, buckets, *q, removed, added, *col)
                    }
                    _ => f64::NAN,
                },
                OutKind::Decayed(i) => match (adjusted(*i), &gp.accs[*i]) {
                    (Acc::Decay(cells), AccPlan::Decay { half_life, col }) => {
                        decayed_output(cells, *half_life, t, removed, added, *col)
                    }
                    _ => f64::NAN,
                },
            };
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
        self.groups.iter().zip(&plan.groups).all(|(g, gp)| {
            let bounds = g.lo <= g.hi
                && g.hi <= end
                && (gp.window.is_none() || gp.hop.is_some() || (g.lo <= g.e_lo && g.e_lo <= end))
                && (gp.window.is_none() || g.lo >= b.base)
                && (gp.window.is_some() || g.hi >= b.base);
            let tiles_ok = (gp.hop.is_some() || g.tiles.is_empty())
                && g.tiles.iter().all(|t| {
                    t.accs.len() == gp.accs.len()
                        && t.accs.iter().zip(&gp.accs).all(|(a, p)| same_kind(a, p))
                })
                && g.tiles
                    .iter()
                    .zip(g.tiles.iter().skip(1))
                    .all(|(a, b)| a.id < b.id);
            bounds
                && tiles_ok
                && g.accs.len() == gp.accs.len()
                && g.accs.iter().zip(&gp.accs).all(|(a, p)| same_kind(a, p))
        })
    }

    /// Approximate bytes held by this key's state.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.buf.bytes()
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

/// A key's state as snapshot format 1 stored it (before the eager region existed).
#[derive(Deserialize)]
pub(crate) struct KeyStateV1 {
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
    tiles: VecDeque<Tile>,
}

impl KeyStateV1 {
    /// The same state in today's layout: format 1 kept every accumulator over the settled region
    /// only, so the eager region starts where the settled window starts and the buffered rows
    /// past the settled point are folded in. `None` if the state does not fit `plan`.
    pub(crate) fn upgrade(self, plan: &Plan) -> Option<KeyState> {
        if self.groups.len() != plan.groups.len() {
            return None;
        }
        let settled = self.settled;
        let mut state = KeyState {
            settled,
            last_ts: self.last_ts,
            buf: self.buf,
            groups: self
                .groups
                .into_iter()
                .zip(&plan.groups)
                .map(|(g, gp)| Group {
                    lo: g.lo,
                    hi: g.hi,
                    e_lo: g.lo,
                    e_start: gp.window.map_or(i64::MIN, |w| settled.saturating_sub(w)),
                    accs: g.accs,
                    tiles: g.tiles,
                })
                .collect(),
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

fn same_kind(a: &Acc, p: &AccPlan) -> bool {
    matches!(
        (a, p),
        (Acc::NonNull(_), AccPlan::NonNull { .. })
            | (Acc::Moments { .. }, AccPlan::Moments { .. })
            | (Acc::Extreme(_), AccPlan::Extreme { .. })
            | (Acc::Distinct(_), AccPlan::Distinct { .. })
            | (Acc::Sketch { .. }, AccPlan::Sketch { .. })
            | (Acc::Decay(_), AccPlan::Decay { .. })
            | (Acc::Edges { .. }, AccPlan::Edges { .. })
    )
}

fn moments_output(kind: &OutKind, n: i64, s1: &ExactSum, s2: &ExactSum) -> f64 {
    match kind {
        OutKind::Sum(_) => s1.to_f64(),
        OutKind::Mean(_) => {
            if n == 0 {
                return f64::NAN;
            }
            div_exact(s1, n as f64)
        }
        OutKind::Var(_) => variance(n, s1, s2),
        OutKind::Std(_) => variance(n, s1, s2).sqrt(),
        _ => f64::NAN,
    }
}

/// Sample variance: `(n * S2 - S1^2) / (n (n - 1))`, numerator exact.
fn variance(n: i64, s1: &ExactSum, s2: &ExactSum) -> f64 {
    if n < 2 {
        return f64::NAN;
    }
    let d = n as f64 * (n - 1) as f64;
    let num = match variance_numerator(n as u64, s1, s2) {
        Some((mag, exp)) => {
            if let Some((hi, lo)) = u256_pair(mag, exp) {
                return dd_div(hi, lo, d).max(0.0);
            }
            ExactSum::from_u256(false, mag, exp)
        }
        None => {
            let mut num = s2.mul_u64(n as u64);
            num.add_assign(&s1.square().negated());
            num
        }
    };
    div_exact(&num, d).max(0.0)
}

/// `n * S2 - S1^2` exactly in fixed-width integers when S1 fits in i128, S2 in 192 bits and the aligned
/// terms in 256 bits (sums of everyday values: the numerator of nearly every variance); `None`
/// otherwise. The same exact value as the general computation, so the same answer.
fn variance_numerator(n: u64, s1: &ExactSum, s2: &ExactSum) -> Option<([u64; 4], i32)> {
    let (a, ea) = s1.as_i128()?;
    let (b, eb) = s2.as_u192()?;
    let a = a.unsigned_abs();
    // x = n * b * 2^eb, y = a^2 * 2^(2 ea), aligned at the lower exponent c
    let e2a = ea.checked_mul(2)?;
    let c = eb.min(e2a);
    let x = shl256(mul_u192_u64(b, n), (eb - c) as u32)?;
    let y = shl256(mul_u128(a, a), (e2a - c) as u32)?;
    let (num, borrow) = sub256(x, y);
    if borrow {
        return None;
    }
    Some((num, c))
}

fn scan_first(buf: &Buf, from: u64, to: u64, col: usize) -> f64 {
    let mut best: Option<(i64, f64)> = None;
    for p in from..to {
        let row = buf.row(p);
        let ts = row[0] as i64;
        if let Some((bts, _)) = best {
            if ts > bts {
                break;
            }
        }
        if let Some(x) = num(row[1 + col]) {
            if best.is_none_or(|b| total_lt((ts, x), b)) {
                best = Some((ts, x));
            }
        }
    }
    best.map(|b| b.1).unwrap_or(f64::NAN)
}

/// Latest non-null (ts, value) in rows `from..to` (ties: largest value); `col = None`: any row.
fn scan_last(buf: &Buf, from: u64, to: u64, col: Option<usize>) -> Option<(i64, f64)> {
    let mut best: Option<(i64, f64)> = None;
    let mut p = to;
    while p > from {
        p -= 1;
        let row = buf.row(p);
        let ts = row[0] as i64;
        if let Some((bts, _)) = best {
            if ts < bts {
                break;
            }
        }
        let x = match col {
            Some(c) => num(row[1 + c]),
            None => Some(0.0),
        };
        if let Some(x) = x {
            if best.is_none_or(|b| total_lt(b, (ts, x))) {
                best = Some((ts, x));
            }
        }
    }
    best
}

fn distinct_output<'a>(
    map: &HashMap<u64, u32>,
    removed: impl Iterator<Item = &'a [u64]>,
    added: impl Iterator<Item = &'a [u64]>,
    col: usize,
) -> f64 {
    let mut delta: HashMap<u64, i64> = HashMap::new();
    let norm = |v: u64| if v == (-0.0f64).to_bits() { 0 } else { v };
    for row in removed {
        if row[1 + col] != NULL {
            *delta.entry(norm(row[1 + col])).or_insert(0) -= 1;
        }
    }
    for row in added {
        if row[1 + col] != NULL {
            *delta.entry(norm(row[1 + col])).or_insert(0) += 1;
        }
    }
    let mut n = map.len() as i64;
    for (k, d) in delta {
        let old = map.get(&k).copied().unwrap_or(0) as i64;
        let new = old + d;
        n += (new > 0) as i64 - (old > 0) as i64;
    }
    n as f64
}

fn quantile_output<'a>(
    n: i64,
    buckets: &BTreeMap<i32, u32>,
    q: f64,
    removed: impl Iterator<Item = &'a [u64]>,
    added: impl Iterator<Item = &'a [u64]>,
    col: usize,
) -> f64 {
    // Corrections as a small sorted delta list, walked together with the settled buckets
    // (no copy of the bucket map).
    let mut delta: Vec<(i32, i64)> = Vec::new();
    for row in removed {
        if let Some(x) = num(row[1 + col]) {
            delta.push((bucket(x), -1));
        }
    }
    for row in added {
        if let Some(x) = num(row[1 + col]) {
            delta.push((bucket(x), 1));
        }
    }
    delta.sort_unstable_by_key(|d| d.0);
    let n = n + delta.iter().map(|d| d.1).sum::<i64>();
    if n <= 0 {
        return f64::NAN;
    }
    let rank = ((q * n as f64).ceil() as i64).clamp(1, n);
    let mut seen = 0i64;
    let mut base = buckets.iter().peekable();
    let mut d = 0;
    loop {
        let next_base = base.peek().map(|(&k, _)| k);
        let next_delta = delta.get(d).map(|x| x.0);
        let key = match (next_base, next_delta) {
            (None, None) => return f64::NAN,
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (Some(a), Some(b)) => a.min(b),
        };
        let mut count = 0i64;
        if next_base == Some(key) {
            count += *base.next().map(|(_, c)| c).unwrap_or(&0) as i64;
        }
        while d < delta.len() && delta[d].0 == key {
            count += delta[d].1;
            d += 1;
        }
        seen += count;
        if count > 0 && seen >= rank {
            return bucket_value(key);
        }
    }
}

fn decayed_output<'a>(
    cells: &DecayCells,
    h: i64,
    t: i64,
    removed: impl Iterator<Item = &'a [u64]>,
    added: impl Iterator<Item = &'a [u64]>,
    col: usize,
) -> f64 {
    let (ct, w) = decay_cell(t, h);
    let mut removed = removed.peekable();
    let mut added = added.peekable();
    let mut live = cells.range(ct.saturating_sub(DECAY_MAX_AGE_PERIODS), ct);
    if let (Some((c, cell)), None, None, None) =
        (live.next(), live.next(), removed.peek(), added.peek())
    {
        // One cell and no corrections (a query at "now", or backfill): the cell is the total.
        let mut total = cell.clone();
        total.scale_pow2((-(ct - c) * DECAY_PERIOD_HALF_LIVES) as i32);
        return total.to_f64() / w;
    }
    let mut total = ExactSum::new();
    // Cells after `ct` hold only events after `t` (the eager region of a query in the past):
    // they and their corrections are left out whole.
    for (c, cell) in cells.range(ct.saturating_sub(DECAY_MAX_AGE_PERIODS), ct) {
        let mut scaled = cell.clone();
        scaled.scale_pow2((-(ct - c) * DECAY_PERIOD_HALF_LIVES) as i32);
        total.add_assign(&scaled);
    }
    // Corrections term by term, exactly: the same exact total as correcting the cells.
    for (row, sign) in removed.map(|r| (r, -1)).chain(added.map(|r| (r, 1))) {
        if let Some(x) = num(row[1 + col]) {
            let (c, wt) = decay_cell(row[0] as i64, h);
            if c > ct || ct - c > DECAY_MAX_AGE_PERIODS {
                continue;
            }
            total.add_pow2_scaled(
                x * wt,
                (-(ct - c) * DECAY_PERIOD_HALF_LIVES) as i32,
                sign < 0,
            );
        }
    }
    // w = 2^((t - ct*P)/h) >= 1: dividing by it is the decay from the cell start to t.
    total.to_f64() / w
}

#[cfg(test)]
mod variance_tests {
    use super::*;
    use proptest::prelude::*;

    fn general(n: u64, s1: &ExactSum, s2: &ExactSum) -> ExactSum {
        let mut num = s2.mul_u64(n);
        num.add_assign(&s1.square().negated());
        num
    }

    #[test]
    fn decay_cells_encode_like_the_map_they_replaced() {
        let mut map = BTreeMap::new();
        let mut cells = DecayCells::default();
        for (c, x) in [(7i64, 1.5f64), (-3, 2.25), (7, 0.1), (40, -8.0)] {
            map.entry(c).or_insert_with(ExactSum::new).add(x);
            cells.entry(c).add(x);
        }
        let opts = bincode::DefaultOptions::new();
        use bincode::Options;
        let a = opts.serialize(&map).unwrap();
        let b = opts.serialize(&cells).unwrap();
        assert_eq!(a, b);
        let back: DecayCells = opts.deserialize(&a).unwrap();
        let got: Vec<(i64, f64)> = back.iter().map(|(c, e)| (c, e.to_f64())).collect();
        assert_eq!(got, vec![(-3, 2.25), (7, 1.6), (40, -8.0)]);
        assert_eq!(
            back.range(0, 39).map(|(c, _)| c).collect::<Vec<_>>(),
            vec![7]
        );
        let mut back = back;
        back.remove(7);
        back.retain(|c| c > 0);
        assert_eq!(back.iter().map(|(c, _)| c).collect::<Vec<_>>(), vec![40]);
    }

    #[test]
    fn wide_products_match_u128_halves() {
        let a = u128::MAX;
        // (2^128 - 1)^2 = 2^256 - 2^129 + 1
        assert_eq!(mul_u128(a, a), [1, 0, u64::MAX - 1, u64::MAX]);
        assert_eq!(
            mul_u192_u64([u64::MAX; 3], 2),
            [u64::MAX - 1, u64::MAX, u64::MAX, 1]
        );
        assert_eq!(shl256([1, 0, 0, 0], 255), Some([0, 0, 0, 1 << 63]));
        assert_eq!(shl256([2, 0, 0, 0], 255), None);
        assert_eq!(shl256([u64::MAX, 1, 0, 0], 64), Some([0, u64::MAX, 1, 0]));
        assert_eq!(
            sub256([0, 1, 0, 0], [1, 0, 0, 0]),
            ([u64::MAX, 0, 0, 0], false)
        );
        assert!(sub256([0, 0, 0, 0], [1, 0, 0, 0]).1);
    }

    proptest! {
        // The fixed-width numerator equals the general exact one whenever it answers, over
        // values whose exponents spread far (so both the fast and the fallback paths run).
        #[test]
        fn numerator_matches_general(
            xs in prop::collection::vec((-(1i64 << 53)..(1i64 << 53), -60i32..60), 2..40),
            removed in 0usize..10,
        ) {
            let (mut s1, mut s2) = (ExactSum::new(), ExactSum::new());
            for &(m, e) in &xs {
                let x = m as f64 * 2f64.powi(e);
                s1.add(x);
                s2.add_square(x);
            }
            let k = removed.min(xs.len() - 2);
            for &(m, e) in &xs[..k] {
                let x = m as f64 * 2f64.powi(e);
                s1.sub(x);
                s2.sub_square(x);
            }
            let n = (xs.len() - k) as u64;
            let want = general(n, &s1, &s2);
            if let Some((mag, exp)) = variance_numerator(n, &s1, &s2) {
                let got = ExactSum::from_u256(false, mag, exp);
                prop_assert_eq!(&got, &want);
                if let Some(pair) = u256_pair(mag, exp) {
                    prop_assert_eq!(pair, want.to_f64_pair());
                }
            }
        }

        #[test]
        fn everyday_values_take_the_fixed_width_path(
            cents in prop::collection::vec(1u32..1_000_000, 2..300),
        ) {
            let (mut s1, mut s2) = (ExactSum::new(), ExactSum::new());
            for &c in &cents {
                let x = c as f64 / 100.0;
                s1.add(x);
                s2.add_square(x);
            }
            let n = cents.len() as u64;
            let (mag, exp) = variance_numerator(n, &s1, &s2).unwrap();
            let want = general(n, &s1, &s2);
            prop_assert_eq!(ExactSum::from_u256(false, mag, exp), want.clone());
            prop_assert_eq!(u256_pair(mag, exp), Some(want.to_f64_pair()));
        }
    }
}

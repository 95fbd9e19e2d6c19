//! Tiled windows' settled events: [`TileRows`] (one store per key, shared by its tiled groups),
//! the summaries per tile of format 4 ([`Tile`]) and of busy spans, and how a query reads them
//! (`KeyState::tile_views`).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::{KeyState, NULL};
use crate::agg::{Acc, AccPlan};
use crate::plan::Plan;
use crate::time::floor_div;

/// One tile's summary of settled events (tiled windows), as snapshot format 4 and before kept
/// every tile: still read, and kept until the tile leaves the window.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Tile {
    pub(super) id: i64,
    pub(super) events: u64,
    pub(super) accs: Vec<Acc>,
}

/// The settled events of a key's tiled windows, oldest first: one row each (`ts`, then one
/// word per column, as in [`Buf`]), while a tiled window that a query at or after the settled
/// point can see still covers them (tile `floor(ts / hop)`). A tile of a few events costs
/// their rows, where a summary per tile cost every accumulator (exact sums, distinct maps,
/// decay cells: ~770 bytes per tile for the benchmark's set). Each tiled group keeps its eager
/// accumulators over the rows of tiles `run_from..` ([`Group::run_from`]): a query corrects
/// them by the rows of the few tiles between `run_from` and its own first tile, and reads
/// extremes and first / last from the rows of its window. Every accumulator is a function of
/// the multiset of events it covers, so this answers what merging per-tile summaries answered,
/// bit for bit. Serialized as its live words (a sequence of u64); the [`RowIndex`] is
/// derived, not serialized (rebuilt at the next settle).
#[derive(Clone, Debug, Default)]
pub struct TileRows {
    data: Vec<u64>,
    /// Dead words at the front of `data`.
    off: usize,
    /// Min / max of the rows from any row on, once the rows are many ([`INDEX_FROM`]).
    index: Option<Box<RowIndex>>,
}

/// Rows from which a key's tile rows keep a [`RowIndex`] (fewer: a read scans them; a quiet
/// key's state stays as small as its rows).
const INDEX_FROM: usize = 64;

/// The extremes of the tile rows from any time on (a query's window is the rows from its first
/// tile on), per column some tiled window takes the min or max of: monotonic deques of (time,
/// value), kept as rows join (in time order) and leave (from the front; a busy span's rows
/// leaving for summaries rebuild it). A read finds the extremes of its window with a binary
/// search instead of a scan. Derived from the rows: not serialized.
#[derive(Clone, Debug)]
struct RowIndex {
    stride: usize,
    cols: SmallVec<[ColIndex; 1]>,
}

#[derive(Clone, Debug)]
struct ColIndex {
    col: usize,
    /// The rows with a non-null value of `col` that no later row undercuts (`lo`: values
    /// ascending, by `f64::total_cmp`) or exceeds (`hi`: descending); equal values are all
    /// kept, so the first one at or after a time is the first least (greatest) value from
    /// there on, the one [`row_extremes`] finds.
    lo: Mono,
    hi: Mono,
}

/// A monotonic deque of (time, `order_key` of the value), oldest first: a vector popped at
/// the back, with a moving front.
#[derive(Clone, Debug, Default)]
struct Mono {
    v: Vec<(i64, i64)>,
    head: usize,
}

impl Mono {
    /// A row (time order) joins: the entries it `beats` (a later row with a value at least as
    /// good) leave.
    #[inline]
    fn push(&mut self, ts: i64, k: i64, beats: impl Fn(i64) -> bool) {
        while self.v.len() > self.head && self.v.last().is_some_and(|e| beats(e.1)) {
            self.v.pop();
        }
        self.v.push((ts, k));
    }
    /// The entries before time `t` leave.
    fn drop_before(&mut self, t: i64) {
        while self.v.get(self.head).is_some_and(|e| e.0 < t) {
            self.head += 1;
        }
        if self.head > 8 && 2 * self.head > self.v.len() {
            self.v.drain(..self.head);
            self.head = 0;
            if self.v.capacity() > 4 * self.v.len() + 16 {
                self.v.shrink_to(2 * self.v.len());
            }
        }
    }
    /// The first entry at or after time `t`.
    #[inline]
    fn first_from(&self, t: i64) -> Option<(i64, i64)> {
        let live = &self.v[self.head..];
        live.get(live.partition_point(|e| e.0 < t)).copied()
    }
    fn clear(&mut self) {
        self.v.clear();
        self.head = 0;
    }
    #[cfg(test)]
    fn live(&self) -> &[(i64, i64)] {
        &self.v[self.head..]
    }
}

/// `f64::total_cmp`'s key of a value word, as an integer (an involution, see [`row_extremes`]).
#[inline]
fn order_key(w: u64) -> i64 {
    (w ^ (((w as i64) >> 63) as u64 >> 1)) as i64
}

impl RowIndex {
    /// The index of `rows` (all the tile rows) for the min / max columns `cols`.
    fn new(rows: &[u64], stride: usize, cols: &[usize]) -> RowIndex {
        let mut ix = RowIndex {
            stride,
            cols: cols
                .iter()
                .map(|&col| ColIndex {
                    col,
                    lo: Mono::default(),
                    hi: Mono::default(),
                })
                .collect(),
        };
        ix.rebuild(rows);
        ix
    }
    /// The deques of `rows` (all the tile rows).
    fn rebuild(&mut self, rows: &[u64]) {
        for c in self.cols.iter_mut() {
            c.lo.clear();
            c.hi.clear();
        }
        for row in rows.chunks_exact(self.stride) {
            self.push(row);
        }
    }
    /// A row joins (time order).
    #[inline]
    fn push(&mut self, row: &[u64]) {
        let ts = row[0] as i64;
        for c in self.cols.iter_mut() {
            let w = row[1 + c.col];
            if w == NULL {
                continue;
            }
            let k = order_key(w);
            c.lo.push(ts, k, |old| old > k);
            c.hi.push(ts, k, |old| old < k);
        }
    }
    /// The rows before time `t` left.
    fn drop_before(&mut self, t: i64) {
        for c in self.cols.iter_mut() {
            c.lo.drop_before(t);
            c.hi.drop_before(t);
        }
    }
    /// [`row_extremes`] of column `col` over the rows from time `t` on; `None`: no deques for
    /// `col`.
    #[inline]
    fn extremes(&self, t: i64, col: usize) -> Option<Option<RowExtremes>> {
        let c = self.cols.iter().find(|c| c.col == col)?;
        let value = |(ts, k): (i64, i64)| (ts, f64::from_bits(order_key(k as u64) as u64));
        Some(
            c.lo.first_from(t)
                .map(value)
                .zip(c.hi.first_from(t).map(value)),
        )
    }
    fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self
                .cols
                .iter()
                .map(|c| 16 * (c.lo.v.capacity() + c.hi.v.capacity()))
                .sum::<usize>()
    }
}

impl TileRows {
    #[inline]
    pub(super) fn words(&self) -> &[u64] {
        &self.data[self.off..]
    }
    #[inline]
    pub(super) fn len(&self, stride: usize) -> usize {
        (self.data.len() - self.off) / stride
    }
    #[inline]
    pub(super) fn ts(&self, i: usize, stride: usize) -> i64 {
        self.data[self.off + i * stride] as i64
    }
    /// First row whose time is `>= t`.
    pub(super) fn seek(&self, t: i64, stride: usize) -> usize {
        let (mut lo, mut hi) = (0, self.len(stride));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.ts(mid, stride) >= t {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        lo
    }
    /// Rows `from..to`.
    #[inline]
    pub(super) fn run(
        &self,
        from: usize,
        to: usize,
        stride: usize,
    ) -> std::slice::ChunksExact<'_, u64> {
        self.data[self.off + from * stride..self.off + to * stride].chunks_exact(stride)
    }
    /// Append a row (time order): grows by a quarter, or reuses the dead front when it is a
    /// quarter of the words, so the words held stay within ~1.5x the live ones.
    pub(super) fn push(&mut self, row: &[u64]) {
        if self.data.len() + row.len() > self.data.capacity() {
            let live = self.data.len() - self.off;
            if self.off > 0 && self.off * 4 >= self.data.len() {
                self.data.drain(..self.off);
                self.off = 0;
            }
            if self.data.len() + row.len() > self.data.capacity() {
                self.data.reserve_exact((live / 4).max(row.len()));
            }
        }
        self.data.extend_from_slice(row);
        if let Some(ix) = self.index.as_deref_mut() {
            ix.push(row);
        }
    }
    /// Drop the rows before time `t`.
    pub(super) fn drop_before(&mut self, t: i64, stride: usize) {
        let k = self.seek(t, stride);
        if k == 0 {
            return;
        }
        self.off += k * stride;
        if let Some(ix) = self.index.as_deref_mut() {
            ix.drop_before(t);
        }
        if self.off == self.data.len() {
            self.data.clear();
            self.off = 0;
        }
        self.fit(stride);
    }
    /// Remove rows `from..to`.
    pub(super) fn remove(&mut self, from: usize, to: usize, stride: usize) {
        self.data
            .drain(self.off + from * stride..self.off + to * stride);
        self.fit(stride);
        if let Some(ix) = self.index.as_deref_mut() {
            ix.rebuild(&self.data[self.off..]);
        }
    }
    /// Give back memory once fewer than half the words held are live.
    pub(super) fn fit(&mut self, stride: usize) {
        let live = self.data.len() - self.off;
        if self.data.capacity() > 2 * live + 8 * stride {
            self.data.drain(..self.off);
            self.off = 0;
            self.data.shrink_to(live + live / 4);
        }
    }
    pub(super) fn clear(&mut self) {
        self.data.clear();
        self.off = 0;
        self.index = None;
    }
    pub(super) fn heap_bytes(&self) -> usize {
        8 * self.data.capacity() + self.index.as_ref().map_or(0, |ix| ix.heap_bytes())
    }
    /// Keep a [`RowIndex`] of the tiled windows' min / max columns while the rows are many
    /// ([`INDEX_FROM`]; dropped again below a quarter of that).
    fn index_for(&mut self, plan: &Plan, stride: usize) {
        let n = self.len(stride);
        if self.index.is_some() {
            if n < INDEX_FROM / 4 && !index_all() {
                self.index = None;
            }
            return;
        }
        if n < INDEX_FROM && !index_all() {
            return;
        }
        let mut cols: SmallVec<[usize; 2]> = SmallVec::new();
        for gp in plan.groups.iter().filter(|gp| gp.hop.is_some()) {
            for ap in &gp.accs {
                if let AccPlan::Extreme { col, .. } = ap {
                    if !cols.contains(col) {
                        cols.push(*col);
                    }
                }
            }
        }
        if !cols.is_empty() {
            self.index = Some(Box::new(RowIndex::new(
                &self.data[self.off..],
                stride,
                &cols,
            )));
        }
    }
    /// [`row_extremes`] of column `col` over the rows from time `t` on (`from`: the first).
    #[inline]
    fn extremes_from(&self, t: i64, from: usize, col: usize, stride: usize) -> Option<RowExtremes> {
        match self.index.as_deref().and_then(|ix| ix.extremes(t, col)) {
            Some(x) => x,
            None => row_extremes(self.run(from, self.len(stride), stride), col),
        }
    }
}

// Tests: summarize every span, busy or not (`KeyState::summarize_busy_spans`).
#[cfg(test)]
thread_local! {
    pub(crate) static SUMMARIZE_ALL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

// Tests: keep a row index whatever the number of rows (`TileRows::index_for`).
#[cfg(test)]
thread_local! {
    pub(crate) static INDEX_ALL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[inline]
fn index_all() -> bool {
    #[cfg(test)]
    return INDEX_ALL.with(|c| c.get());
    #[cfg(not(test))]
    false
}

#[inline]
fn summarize_all() -> bool {
    #[cfg(test)]
    return SUMMARIZE_ALL.with(|c| c.get());
    #[cfg(not(test))]
    false
}

impl Serialize for TileRows {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.words())
    }
}

impl<'de> Deserialize<'de> for TileRows {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(TileRows {
            data: Vec::<u64>::deserialize(d)?,
            off: 0,
            index: None,
        })
    }
}

impl KeyState {
    /// Tiled windows: the rows of each span `k * big .. (k + 1) * big` in `from..to` (settled,
    /// `big` the longest hop) whose summaries per tile, for every tiled group, take fewer bytes
    /// than the rows become those summaries (`Group::tiles`, the form of format 4), merged into
    /// the group's last summary when it is of the same tile (a span still filling): a busy key
    /// keeps about a summary per tile, as before, plus rows worth less than a tile's summary,
    /// a quiet one its few rows. The rows leave the tile rows and the running accumulators;
    /// reads merge the summaries. (Called after every settle of tiled windows, with the rows
    /// that joined: it also starts or drops the row index of min / max, `TileRows::index_for`.)
    pub(super) fn summarize_busy_spans(
        &mut self,
        plan: &Plan,
        s: i64,
        from: i64,
        to: i64,
        big: i64,
    ) {
        let stride = self.buf.stride;
        // (the rows that joined: the row index of min / max starts once they are many)
        self.tile_rows.index_for(plan, stride);
        // fewer row bytes than one tile per group cannot pay
        let least: usize = plan
            .groups
            .iter()
            .filter(|gp| gp.hop.is_some())
            .map(|gp| 24 + std::mem::size_of::<Acc>() * gp.accs.len())
            .sum();
        // the rows of `from..to` are the newest (rows join in time order): found from the end,
        // so a quiet key pays for its few rows, not for a search of its window
        let n = self.tile_rows.len(stride);
        let mut end = n;
        while end > 0 && self.tile_rows.ts(end - 1, stride) >= to {
            end -= 1;
        }
        let mut a = end;
        while a > 0 && self.tile_rows.ts(a - 1, stride) >= from {
            a -= 1;
        }
        let summaries = self.groups.iter().any(|g| !g.tiles.is_empty());
        if (end - a) * 8 * stride <= least && !summaries && !summarize_all() {
            return;
        }
        while a < end {
            let k = floor_div(self.tile_rows.ts(a, stride), big);
            let b = self
                .tile_rows
                .seek(k.saturating_add(1).saturating_mul(big), stride)
                .clamp(a + 1, end);
            let row_bytes = (b - a) * 8 * stride;
            // a span whose tiles are summaries already (it went on filling): its rows join them
            let t = self.tile_rows.ts(a, stride);
            let joining = plan
                .groups
                .iter()
                .zip(&self.groups)
                .all(|(gp, g)| match gp.hop {
                    Some(h) => g.tiles.back().is_some_and(|tl| tl.id == floor_div(t, h)),
                    None => true,
                });
            // a span still filling is tried once its rows clearly weigh more (each try folds them)
            let filling = k >= floor_div(s, big);
            let least = if filling { 4 * least } else { least };
            if row_bytes <= least && !joining && !summarize_all() {
                a = b;
                continue;
            }
            let mut made: SmallVec<[(usize, VecDeque<Tile>); 4]> = SmallVec::new();
            let mut bytes = 0;
            for (gi, gp) in plan.groups.iter().enumerate() {
                let (Some(w), Some(h)) = (gp.window, gp.hop) else {
                    continue;
                };
                let need = floor_div(s, h).saturating_sub(w / h);
                let mut tiles: VecDeque<Tile> = VecDeque::new();
                for row in self.tile_rows.run(a, b, stride) {
                    let id = floor_div(row[0] as i64, h);
                    if id < need {
                        continue;
                    }
                    if tiles.back().map(|t| t.id) != Some(id) {
                        tiles.push_back(Tile {
                            id,
                            events: 0,
                            accs: gp.accs.iter().map(Acc::new).collect(),
                        });
                    }
                    if let Some(tile) = tiles.back_mut() {
                        tile.events += 1;
                        for (acc, ap) in tile.accs.iter_mut().zip(&gp.accs) {
                            acc.apply(ap, row, 1, true);
                        }
                    }
                }
                bytes += tiles
                    .iter()
                    .map(|t| 24 + t.accs.iter().map(Acc::bytes).sum::<usize>())
                    .sum::<usize>();
                made.push((gi, tiles));
            }
            if bytes >= row_bytes && !joining && !summarize_all() {
                a = b;
                continue;
            }
            for (gi, tiles) in made {
                let (g, gp) = (&mut self.groups[gi], &plan.groups[gi]);
                let h = gp.hop.unwrap_or(1);
                // the rows the running accumulators hold leave them
                let r = self
                    .tile_rows
                    .seek(g.run_from.saturating_mul(h), stride)
                    .max(a);
                if r < b {
                    for (acc, ap) in g.accs.iter_mut().zip(&gp.accs) {
                        if acc.eager() {
                            acc.apply_rows(ap, self.tile_rows.run(r, b, stride), -1, false);
                        }
                    }
                }
                for tile in tiles {
                    match g.tiles.back_mut() {
                        Some(last) if last.id == tile.id => {
                            last.events += tile.events;
                            for ((acc, other), ap) in
                                last.accs.iter_mut().zip(&tile.accs).zip(&gp.accs)
                            {
                                acc.merge(ap, other);
                            }
                        }
                        _ => g.tiles.push_back(tile),
                    }
                }
            }
            self.tile_rows.remove(a, b, stride);
            end -= b - a;
        }
    }

    /// The accumulators of tiled group `gi` that differ from its stored ones for a query at
    /// `t`, into `views`: the eager ones corrected from tile `run_from` to the query's first
    /// tile by the rows between (none to correct: a query of the tile the group expects); the
    /// extremes and first / last from the rows of the window; tiles of summaries (format 4
    /// and before) merged in; the invertible ones then take the buffered rows `added` of the
    /// window (the others read those through the view's corrections).
    pub(super) fn tile_views<'r>(
        &self,
        plan: &Plan,
        gi: usize,
        t: i64,
        h: i64,
        added: impl Iterator<Item = &'r [u64]> + Clone,
        views: &mut SmallVec<[(usize, usize, Acc); 4]>,
    ) {
        let (g, gp) = (&self.groups[gi], &plan.groups[gi]);
        let stride = self.buf.stride;
        let tr = &self.tile_rows;
        let first = floor_div(t, h).saturating_sub(gp.window.unwrap_or(0) / h);
        // the window's rows: `i0..`; the accumulators': `r0..`
        let i0 = tr.seek(first.saturating_mul(h), stride);
        let r0 = tr.seek(g.run_from.saturating_mul(h), stride);
        let end = tr.len(stride);
        let summaries = g.tiles.back().is_some_and(|tl| tl.id >= first);
        let has_added = added.clone().next().is_some();
        // extremes of a column over the window's rows: (col, least, greatest), min and max share
        let mut extremes: SmallVec<[(usize, Option<RowExtremes>); 2]> = SmallVec::new();
        for (i, (acc, ap)) in g.accs.iter().zip(&gp.accs).enumerate() {
            let mut view = if acc.eager() {
                if i0 == r0 && !summaries && !(has_added && acc.invertible()) {
                    continue;
                }
                let mut v = acc.clone();
                if i0 < r0 {
                    v.apply_rows(ap, tr.run(i0, r0, stride), 1, false);
                } else if i0 > r0 {
                    v.apply_rows(ap, tr.run(r0, i0, stride), -1, false);
                }
                v
            } else {
                let mut v = Acc::new(ap);
                match (ap, &mut v) {
                    (AccPlan::Extreme { col, max }, Acc::Extreme(e)) => {
                        let ext = match extremes.iter().find(|x| x.0 == *col) {
                            Some(x) => x.1,
                            None => {
                                let x = tr.extremes_from(first.saturating_mul(h), i0, *col, stride);
                                extremes.push((*col, x));
                                x
                            }
                        };
                        if let Some((lo, hi)) = ext {
                            e.0.push_back(if *max { hi } else { lo });
                        }
                    }
                    (AccPlan::Edges { col }, Acc::Edges(e)) => {
                        *e = row_edges(tr, i0, end, stride, *col);
                    }
                    _ => {}
                }
                v
            };
            for tile in g.tiles.iter().filter(|tl| tl.id >= first) {
                view.merge(ap, &tile.accs[i]);
            }
            if view.invertible() {
                view.apply_rows(ap, added.clone(), 1, false);
            }
            views.push((gi, i, view));
        }
    }
}

/// The least and the greatest (ts, value) of a column over some rows.
type RowExtremes = ((i64, f64), (i64, f64));

/// The least and greatest (ts, non-null value) of column `col` over `rows` (`f64::total_cmp`:
/// one value whatever the order of the scan, as a per-tile extreme merged over the tiles).
/// Compares the values' `total_cmp` keys as integers (the same order).
fn row_extremes<'a>(rows: impl Iterator<Item = &'a [u64]>, col: usize) -> Option<RowExtremes> {
    // f64::total_cmp's key: an involution, so it also maps a key back to the value's bits
    let key = |w: u64| (w ^ (((w as i64) >> 63) as u64 >> 1)) as i64;
    let mut rows = rows.filter(|row| row[1 + col] != NULL);
    let first = rows.next()?;
    let (mut lo, mut hi) = (
        (key(first[1 + col]), first[0]),
        (key(first[1 + col]), first[0]),
    );
    for row in rows {
        let k = key(row[1 + col]);
        if k < lo.0 {
            lo = (k, row[0]);
        }
        if k > hi.0 {
            hi = (k, row[0]);
        }
    }
    let value = |k: i64| f64::from_bits(key(k as u64) as u64);
    Some(((lo.1 as i64, value(lo.0)), (hi.1 as i64, value(hi.0))))
}

/// First / last edges of rows `from..to` of `tr` (time order): what folding every row into an
/// [`crate::agg::Edges`] gives, from the rows at the earliest and at the latest time only.
fn row_edges(
    tr: &TileRows,
    from: usize,
    to: usize,
    stride: usize,
    col: Option<usize>,
) -> crate::agg::Edges {
    let p = AccPlan::Edges { col };
    let (mut head, mut tail) = (Acc::new(&p), Acc::new(&p));
    for row in tr.run(from, to, stride) {
        if let Acc::Edges(e) = &head {
            if e.first.is_some_and(|f| row[0] as i64 > f.0) {
                break;
            }
        }
        head.apply(&p, row, 1, true);
    }
    for row in tr.run(from, to, stride).rev() {
        if let Acc::Edges(e) = &tail {
            if e.last.is_some_and(|l| (row[0] as i64) < l.0) {
                break;
            }
        }
        tail.apply(&p, row, 1, true);
    }
    match (head, tail) {
        (Acc::Edges(h), Acc::Edges(t)) => crate::agg::Edges {
            first: h.first,
            last: t.last,
        },
        _ => crate::agg::Edges::default(),
    }
}

#[cfg(test)]
impl KeyState {
    /// This state in the form snapshot format 4 and before kept tiled windows: a summary per
    /// tile (of the tiles a query at or after the settled point can see), folded as that code
    /// folded them, next to any summaries the state holds already; no tile rows.
    pub(crate) fn with_summary_tiles(&self, plan: &Plan) -> KeyState {
        let mut out = self.clone();
        let stride = self.buf.stride;
        let n = self.tile_rows.len(stride);
        for (g, gp) in out.groups.iter_mut().zip(&plan.groups) {
            let (Some(w), Some(h)) = (gp.window, gp.hop) else {
                continue;
            };
            let need = floor_div(self.settled, h).saturating_sub(w / h);
            let mut tiles: std::collections::BTreeMap<i64, Tile> =
                g.tiles.drain(..).map(|t| (t.id, t)).collect();
            for row in self.tile_rows.run(0, n, stride) {
                let id = floor_div(row[0] as i64, h);
                if id < need {
                    continue;
                }
                let tile = tiles.entry(id).or_insert_with(|| Tile {
                    id,
                    events: 0,
                    accs: gp.accs.iter().map(Acc::new).collect(),
                });
                tile.events += 1;
                for (acc, ap) in tile.accs.iter_mut().zip(&gp.accs) {
                    acc.apply(ap, row, 1, true);
                }
            }
            g.tiles = tiles.into_values().collect();
            for (acc, ap) in g.accs.iter_mut().zip(&gp.accs) {
                *acc = Acc::new(ap);
            }
            g.run_from = i64::MIN;
        }
        out.tile_rows = TileRows::default();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Spec;
    use proptest::strategy::Strategy as _;

    const SEC: i64 = 1_000_000_000;

    /// Tiled windows of every aggregation a tiled window takes, hop `h` seconds, windows of 4
    /// and 12 tiles, next to a sliding and a lifetime feature; allowed lateness 5m.
    fn tiles_plan(h: i64) -> Plan {
        let mut feats = Vec::new();
        for w in [4 * h, 12 * h] {
            let tiled = format!(r#""window": "{w}s", "hop": "{h}s""#);
            for f in [
                r#""agg": "count""#,
                r#""agg": "count", "column": "v""#,
                r#""agg": "sum", "column": "v""#,
                r#""agg": "mean", "column": "v""#,
                r#""agg": "var", "column": "v""#,
                r#""agg": "min", "column": "v""#,
                r#""agg": "max", "column": "v""#,
                r#""agg": "first", "column": "v""#,
                r#""agg": "last", "column": "v""#,
                r#""agg": "time_since_last""#,
                r#""agg": "distinct_count", "column": "c""#,
                r#""agg": "quantile", "column": "v", "q": 0.7"#,
                r#""agg": "decayed_sum", "column": "v", "half_life": "90s""#,
            ] {
                feats.push(format!(r#"{{{f}, {tiled}, "name": "f{}"}}"#, feats.len()));
            }
        }
        feats.push(r#"{"agg": "sum", "column": "v", "window": "10m", "name": "sliding"}"#.into());
        feats.push(r#"{"agg": "last", "column": "v", "name": "lifetime"}"#.into());
        let doc = format!(
            r#"{{"version": 1, "entity": "k", "timestamp": "ts", "allowed_lateness": "5m",
            "features": [{}]}}"#,
            feats.join(", ")
        );
        Plan::new(Spec::from_json(&doc).unwrap())
    }

    fn answers(plan: &Plan, st: &KeyState, t: i64) -> Vec<u64> {
        let mut out = vec![0.0; plan.n_features()];
        st.query(plan, t, &mut out).unwrap();
        out.iter().map(|x| x.to_bits()).collect()
    }

    fn value_word() -> impl proptest::strategy::Strategy<Value = u64> {
        use proptest::prelude::*;
        prop_oneof![
            Just(NULL),
            Just((-0.0f64).to_bits()),
            Just(0.0f64.to_bits()),
            Just(1e300f64.to_bits()),
            Just((-1e300f64).to_bits()),
            (-2000i64..2000).prop_map(|c| (c as f64 / 8.0).to_bits()),
            (-1000i64..1000).prop_map(|c| (c as f64 / 100.0).to_bits()),
        ]
    }

    #[test]
    fn tile_state_takes_the_smaller_of_rows_and_summaries() {
        // A quiet key keeps the rows of its tiles, a busy one a summary per tile: either way no
        // more than the summary per tile that format 4 kept (`with_summary_tiles`), and a busy
        // key's state stays bounded by its tiles, not by its events.
        let plan = tiles_plan(300);
        for (per_tile, quiet) in [(1i64, true), (2000, false)] {
            let mut st = KeyState::new(&plan, i64::MIN);
            let t0 = 1_700_000_000 * SEC;
            let n = per_tile * 40;
            for i in 0..n {
                let ts = t0 + i * 300 * SEC / per_tile;
                let v = ((i * 7919 % 1000) as f64 / 8.0).to_bits();
                st.apply_event(&plan, ts, &[v, (i % 3) as u64], ts - 300 * SEC);
            }
            let summaries = st.with_summary_tiles(&plan);
            let (rows, tiles) = (
                st.tile_rows.len(st.buf.stride),
                st.groups.iter().map(|g| g.tiles.len()).sum::<usize>(),
            );
            // (the buffer, of the sliding feature, is the same but for a clone's spare capacity)
            let (ours, old) = (
                st.bytes() - st.buf.bytes(),
                summaries.bytes() - summaries.buf.bytes(),
            );
            assert!(ours * 10 <= old * 12, "{per_tile}: {ours} > {old}");
            if quiet {
                assert!(
                    rows > 0 && tiles == 0,
                    "{per_tile}: {rows} rows, {tiles} tiles"
                );
                assert!(2 * st.bytes() < summaries.bytes(), "{per_tile}");
            } else {
                // the 5 tiles of the 20m window and the 13 of the 1h one in summaries, rows of
                // one tile at most
                assert!(
                    tiles >= 16 && rows <= per_tile as usize,
                    "{rows} rows, {tiles} tiles"
                );
            }
            let t = st.settled + 300 * SEC;
            assert_eq!(answers(&plan, &st, t), answers(&plan, &summaries, t));
        }
    }

    proptest::proptest! {
        // The integer-key scan finds the extremes `f64::total_cmp` orders (NaNs of both signs,
        // signed zeros, infinities, nulls skipped), the first of equal ones.
        #[test]
        fn row_extremes_follow_total_cmp(
            words in proptest::collection::vec(
                proptest::prop_oneof![value_word(), proptest::prelude::any::<u64>()], 0..40),
        ) {
            let rows: Vec<u64> = words.iter().enumerate().flat_map(|(i, &w)| [i as u64, w]).collect();
            let got = row_extremes(rows.chunks_exact(2), 0);
            let mut want: Option<RowExtremes> = None;
            for (i, &w) in words.iter().enumerate() {
                if w == NULL {
                    continue;
                }
                let e = (i as i64, f64::from_bits(w));
                want = Some(match want {
                    None => (e, e),
                    Some((lo, hi)) => (
                        if e.1.total_cmp(&lo.1).is_lt() { e } else { lo },
                        if e.1.total_cmp(&hi.1).is_gt() { e } else { hi },
                    ),
                });
            }
            let bits = |x: Option<RowExtremes>| x.map(|((a, b), (c, d))| (a, b.to_bits(), c, d.to_bits()));
            proptest::prop_assert_eq!(bits(got), bits(want));
        }
    }

    proptest::proptest! {
        // The row index's extremes from every time on are the scan's (`row_extremes`: value
        // bits and the time of the first least / greatest), through rows joining in time order
        // (ties of time and value), leaving from the front, a busy span's leaving from the
        // middle, and clearing; and an index started late (rows first, then the index) is the
        // same as one kept from the start.
        #[test]
        fn row_index_answers_like_the_scan(
            ops in proptest::collection::vec(
                proptest::prop_oneof![
                    6 => (0i64..4, value_word(), value_word()).prop_map(|(g, a, b)| (0u8, g, a, b)),
                    1 => (0i64..30).prop_map(|g| (1u8, g, 0, 0)),
                    1 => (0i64..40, 0i64..40).prop_map(|(a, b)| (2u8, a, b as u64, 0)),
                    1 => proptest::strategy::Just((3u8, 0i64, 0u64, 0u64)),
                ],
                0..200),
            start_at in 0usize..200,
        ) {
            use proptest::prop_assert_eq;
            let stride = 3;
            let cols = [0usize, 1];
            let mut tr = TileRows::default();
            let mut t = 0i64;
            for (i, &(op, g, a, b)) in ops.iter().enumerate() {
                if i == start_at || (i == 0 && start_at >= ops.len()) {
                    tr.index = Some(Box::new(RowIndex::new(tr.words(), stride, &cols)));
                }
                let n = tr.len(stride);
                match op {
                    0 => {
                        t += g;
                        tr.push(&[t as u64, a, b]);
                    }
                    1 => tr.drop_before(t - g, stride),
                    2 => {
                        let (x, y) = ((g as usize).min(n), (a as usize).min(n));
                        tr.remove(x.min(y), x.max(y), stride);
                    }
                    _ => {
                        let indexed = tr.index.is_some();
                        tr.clear();
                        if indexed {
                            tr.index = Some(Box::new(RowIndex::new(tr.words(), stride, &cols)));
                        }
                    }
                }
                let Some(ix) = tr.index.as_deref() else { continue };
                let n = tr.len(stride);
                for from in (-1..=t + 1).rev() {
                    let k = tr.seek(from, stride);
                    for &col in &cols {
                        let got = ix.extremes(from, col).expect("indexed column");
                        let want = row_extremes(tr.run(k, n, stride), col);
                        let bits = |x: Option<RowExtremes>| {
                            x.map(|((a, b), (c, d))| (a, b.to_bits(), c, d.to_bits()))
                        };
                        prop_assert_eq!(bits(got), bits(want), "op {} from {} col {}", i, from, col);
                    }
                    if k == 0 {
                        break;
                    }
                }
                let fresh = RowIndex::new(tr.words(), stride, &cols);
                for (c, f) in ix.cols.iter().zip(&fresh.cols) {
                    prop_assert_eq!(c.lo.live(), f.lo.live());
                    prop_assert_eq!(c.hi.live(), f.hi.live());
                }
            }
        }
    }

    proptest::proptest! {
        // Tiles as rows (with the running sums from `run_from`) answer what the summary per
        // tile answered (the form of snapshot format 4 and before), bit for bit, at every
        // query instant a state takes: few and many events per tile (event gaps of ~0.02 to ~5
        // tiles), in time order and out of order within the allowed lateness, settling ahead
        // of the queries (online: lead = lateness, and beyond) or at them (backfill: lead 0);
        // and so does a state switched to summaries at some point that then takes more events
        // (an old state restored: summaries and rows together); with every completed span of
        // rows summarized as a busy key's are, or none.
        #[test]
        fn compact_tiles_answer_like_summaries(
            events in proptest::collection::vec(
                (0i64..1000, 0i64..300, value_word(), 0u64..5), 1..90),
            hop in proptest::sample::select(vec![60i64, 300, 900]),
            rate in proptest::sample::select(vec![1i64, 8, 60]),
            lead_x in 0i64..3,
            shuffle in proptest::bool::ANY,
            switch_at in 0usize..90,
            summarize_all in proptest::bool::ANY,
            index_all in proptest::bool::ANY,
        ) {
            SUMMARIZE_ALL.with(|c| c.set(summarize_all));
            INDEX_ALL.with(|c| c.set(index_all));
            let plan = tiles_plan(hop);
            let lateness = 300 * SEC;
            let lead = lateness * lead_x;
            // event times: gaps of 0..1000 s / rate, then arrival = ts + delay (< lateness)
            let mut ts = 1_700_000_000 * SEC;
            let mut evs: Vec<(i64, i64, u64, u64)> = events
                .iter()
                .map(|&(gap, delay, v, c)| {
                    ts += gap * SEC / rate;
                    let delay = if shuffle { delay * SEC * 99 / 100 } else { 0 };
                    (ts + delay, ts, v, c)
                })
                .collect();
            evs.sort_by_key(|e| e.0);
            let mut a = KeyState::new(&plan, i64::MIN);
            let mut b: Option<KeyState> = None;
            let mut wm = i64::MIN;
            for (i, &(_, ts, v, c)) in evs.iter().enumerate() {
                wm = wm.max(ts);
                let settle = wm - lateness;
                for st in std::iter::once(&mut a).chain(b.as_mut()) {
                    if settle.saturating_sub(st.settled) > lateness / 8 {
                        st.settle(&plan, settle, lead);
                    }
                    st.insert(&plan, ts, &[v, c]);
                }
                if i == switch_at {
                    b = Some(a.with_summary_tiles(&plan));
                }
                let s = a.settled.max(ts);
                for t in [
                    s,
                    s + 1,
                    s + hop * SEC / 2,
                    s + lateness,
                    s + lateness + hop * SEC,
                    s + 3 * lateness,
                    s + 6 * hop * SEC,
                    s + 13 * hop * SEC,
                ] {
                    let want = answers(&plan, &a.with_summary_tiles(&plan), t);
                    proptest::prop_assert_eq!(&answers(&plan, &a, t), &want, "at +{}", t - s);
                    if let Some(b) = &b {
                        proptest::prop_assert_eq!(&answers(&plan, b, t), &want, "switched, at +{}", t - s);
                    }
                }
            }
        }
    }
}

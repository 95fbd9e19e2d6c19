//! Aggregations: the table of them ([`AGGS`]) and their accumulators, one file per family.
//!
//! | file | aggregations | accumulator |
//! |---|---|---|
//! | `count.rs` | count | [`NonNull`] (and row positions for `count()` of events) |
//! | `moments.rs` | sum, mean, var, std | [`Moments`]: exact sums |
//! | `extremes.rs` | min, max | [`Extreme`]: monotonic deque |
//! | `distinct.rs` | distinct_count | [`Distinct`]: multiset of identities |
//! | `quantile.rs` | quantile | [`Sketch`]: log buckets |
//! | `decay.rs` | decayed_sum | [`DecayCells`]: exact sums per period |
//! | `edges.rs` | first, last, time_since_last | [`Edges`] (lifetime / tiles), else buffer scans |
//! | `strings.rs` | first, last, min, max of strings, lifetime | [`TextPick`] (sliding: buffer scans in `edges.rs` / `extremes.rs`) |
//!
//! Each family file holds its accumulator's whole life ([`Family`]: reset, eager, invertible,
//! merge, apply, bytes) and the output functions ([`Eval`]) that read it; [`Acc`] only
//! dispatches. `state.rs` keeps the event buffer, the window groups and settling, and fills a
//! query's answer by calling each output's [`Eval`] on a [`View`] of its group.
//!
//! Adding an aggregation: a row in [`AGGS`] (its name, column use, parameter, accumulator and
//! output function) and, if no family computes it yet, a new family file, its [`AccPlan`]
//! variant and one line appended last in the `families!` list that declares [`Acc`] (see
//! `docs/architecture.md`).

use std::cell::{Cell, RefCell};

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

mod count;
mod decay;
mod distinct;
mod edges;
mod extremes;
mod moments;
mod quantile;
mod strings;

pub use count::NonNull;
pub use decay::DecayCells;
pub use distinct::Distinct;
pub use edges::Edges;
pub use extremes::Extreme;
pub use moments::Moments;
pub use quantile::Sketch;
pub use strings::{Pick, TextPick};

/// One accumulator's parameters inside a window group. `col` indexes the plan's columns.
#[derive(Clone, Debug, PartialEq)]
pub enum AccPlan {
    NonNull {
        col: usize,
    },
    Moments {
        col: usize,
        squares: bool,
    },
    Extreme {
        col: usize,
        max: bool,
    },
    Distinct {
        col: usize,
    },
    Sketch {
        col: usize,
    },
    Decay {
        col: usize,
        half_life: i64,
    },
    /// Lifetime windows only: earliest and latest (ts, value) of a column, or of any event.
    Edges {
        col: Option<usize>,
    },
    /// Lifetime windows of a string column only: the string `pick` keeps.
    TextPick {
        col: usize,
        pick: Pick,
    },
}

/// An accumulator family: every accumulator is a function of the multiset of events it covers
/// (never of the order in which they came).
pub trait Family: Default {
    /// Folded in when an event arrives, in any order, and folded out again when it leaves the
    /// window (the eager region). The others (monotonic deques, first/last edges) need events in
    /// time order and are folded only into the settled region.
    const EAGER: bool;
    /// Views correct it to a query window by applying rows; the others are corrected by their
    /// output code.
    const INVERTIBLE: bool;
    /// Empty, as `Default`, keeping allocations.
    fn reset(&mut self);
    /// Fold a summary of other events in (tiles). Extremes are single-value summaries here.
    fn merge(&mut self, p: &AccPlan, other: &Self);
    /// Fold one event row (`ts`, then one word per plan column) in (`sign = 1`) or out
    /// (`sign = -1`). `lifetime`: a summarizing group (lifetime window or tile).
    /// Every family marks it `#[inline(always)]`: [`Acc::apply`] and [`Acc::apply_rows`] both
    /// inline it (with two call sites the compiler otherwise calls it, ~10% more instructions
    /// per ingested event, measured).
    fn apply(&mut self, p: &AccPlan, row: &[u64], sign: i64, lifetime: bool);
    /// Heap bytes held (beyond the `Acc` itself).
    fn heap_bytes(&self) -> usize;
}

/// Declares [`Acc`], one variant per family (in this order: the snapshot format), and its
/// dispatch to the families: adding a family is one line here (plus its [`AccPlan`] variant,
/// of the same name).
macro_rules! families {
    ($(#[$meta:meta])* pub enum Acc { $($(#[$vmeta:meta])* $var:ident($ty:ty),)* }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Serialize, Deserialize)]
        pub enum Acc {
            $($(#[$vmeta])* $var($ty),)*
        }

        impl Acc {
            pub fn new(p: &AccPlan) -> Acc {
                match p {
                    $(AccPlan::$var { .. } => Acc::$var(<$ty>::default()),)*
                }
            }

            /// Whether this accumulator is the kind `p` plans (guards deserialized state).
            pub fn same_kind(&self, p: &AccPlan) -> bool {
                match (self, p) {
                    $((Acc::$var(_), AccPlan::$var { .. }) => true,)*
                    #[allow(unreachable_patterns)]
                    _ => false,
                }
            }

            /// Empty, as `Acc::new(p)`, keeping allocations.
            #[inline]
            pub fn reset(&mut self) {
                match self {
                    $(Acc::$var(a) => a.reset(),)*
                }
            }

            /// See [`Family::INVERTIBLE`].
            #[inline]
            pub fn invertible(&self) -> bool {
                match self {
                    $(Acc::$var(_) => <$ty as Family>::INVERTIBLE,)*
                }
            }

            /// See [`Family::EAGER`].
            #[inline]
            pub fn eager(&self) -> bool {
                match self {
                    $(Acc::$var(_) => <$ty as Family>::EAGER,)*
                }
            }

            /// See [`Family::merge`] (accumulators of different kinds do not merge).
            pub fn merge(&mut self, p: &AccPlan, other: &Acc) {
                match (self, other) {
                    $((Acc::$var(a), Acc::$var(b)) => a.merge(p, b),)*
                    #[allow(unreachable_patterns)]
                    _ => {}
                }
            }

            /// See [`Family::apply`].
            #[inline]
            pub fn apply(&mut self, p: &AccPlan, row: &[u64], sign: i64, lifetime: bool) {
                match self {
                    $(Acc::$var(a) => a.apply(p, row, sign, lifetime),)*
                }
            }

            /// `if self.eager() { self.apply(p, row, sign, false) }` with one dispatch, inlined
            /// at its call site (an insert's eager accumulators: the other families' arms are
            /// compiled out).
            #[inline(always)]
            pub fn apply_if_eager(&mut self, p: &AccPlan, row: &[u64], sign: i64) {
                match self {
                    $(Acc::$var(a) => {
                        if <$ty as Family>::EAGER {
                            a.apply(p, row, sign, false)
                        }
                    })*
                }
            }

            /// [`Family::apply`] of each of `rows`, in order, with one dispatch for the run
            /// (the family's `apply` inlined in the loop): the same state as one
            /// [`Acc::apply`] per row.
            #[inline]
            pub fn apply_rows<'r>(
                &mut self,
                p: &AccPlan,
                rows: impl Iterator<Item = &'r [u64]>,
                sign: i64,
                lifetime: bool,
            ) {
                match self {
                    $(Acc::$var(a) => {
                        for row in rows {
                            a.apply(p, row, sign, lifetime);
                        }
                    })*
                }
            }

            fn heap_bytes(&self) -> usize {
                match self {
                    $(Acc::$var(a) => a.heap_bytes(),)*
                }
            }
        }
    };
}

families! {
    /// One accumulator's state over the events it covers.
    ///
    /// **The variant order is the snapshot format**: snapshots store an `Acc` as bincode, which
    /// writes the variant's index and then its fields. Never reorder, remove or insert variants,
    /// and never change a family's fields: a new family goes last. `tests::acc_encoding_is_pinned`
    /// holds the bytes of every variant to the committed ones.
    pub enum Acc {
        NonNull(NonNull),
        Moments(Moments),
        /// Monotonic deque of (ts, value): increasing values for min, decreasing for max.
        Extreme(Extreme),
        Distinct(Distinct),
        Sketch(Sketch),
        Decay(DecayCells),
        Edges(Edges),
        /// The winning (ts, string word) of a string column (lifetime windows).
        TextPick(TextPick),
    }
}

impl Acc {
    /// After its group settled to `s`: a sliding window (`start`: the window's first instant)
    /// expires extremes; a lifetime window (`start = None`) forgets decayed cells too old to
    /// matter.
    #[inline]
    pub fn settled(&mut self, p: &AccPlan, s: i64, start: Option<i64>) {
        match (self, start) {
            (Acc::Extreme(e), Some(start)) => e.expire(start),
            (Acc::Decay(cells), None) => cells.age(p, s),
            _ => {}
        }
    }

    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Acc>() + self.heap_bytes()
    }

    /// Fold `rows` (in time order) into a string accumulator ([`TextPick`]), whose strings are
    /// in `texts`; other accumulators are left alone (they take rows by [`Acc::apply_rows`]).
    #[inline]
    pub fn fold_texts<'r>(
        &mut self,
        p: &AccPlan,
        rows: impl Iterator<Item = &'r [u64]>,
        texts: &crate::text::Texts,
    ) {
        if let Acc::TextPick(t) = self {
            for row in rows {
                t.fold(p, row, texts);
            }
        }
    }

    /// The string word a string accumulator holds (`None`: none, or not a string accumulator).
    pub fn text_word(&self) -> Option<u64> {
        match self {
            Acc::TextPick(t) => t.word(),
            _ => None,
        }
    }
}

/// Stored event rows (`ts`, then one word per plan column), addressed by absolute position:
/// the read-only view of a key's buffer that output functions scan.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    pub data: &'a [u64],
    pub stride: usize,
    /// Dead rows at the front of `data`.
    pub off: usize,
    /// Absolute position of the first live row.
    pub base: u64,
}

impl<'a> Rows<'a> {
    #[inline]
    pub fn row(&self, abs: u64) -> &'a [u64] {
        let i = (abs - self.base) as usize + self.off;
        &self.data[i * self.stride..(i + 1) * self.stride]
    }
    #[inline]
    pub fn ts(&self, abs: u64) -> i64 {
        self.data[((abs - self.base) as usize + self.off) * self.stride] as i64
    }
    /// Rows at absolute positions `r.0 .. r.1` (`r.0 <= r.1`), as one slice cut in rows: the
    /// same rows as [`Self::range`], one bounds check for the run.
    #[inline]
    pub fn run(self, r: (u64, u64)) -> std::slice::ChunksExact<'a, u64> {
        let i = (r.0 - self.base) as usize + self.off;
        let j = (r.1 - self.base) as usize + self.off;
        self.data[i * self.stride..j * self.stride].chunks_exact(self.stride)
    }
    /// Rows at absolute positions `r.0 .. r.1`.
    #[inline]
    pub fn range(self, r: (u64, u64)) -> impl DoubleEndedIterator<Item = &'a [u64]> + 'a {
        (r.0..r.1).map(move |p| self.row(p))
    }
}

/// Rows (absolute position ranges `from..to`) that correct a group's state to one query window.
#[derive(Clone, Copy, Debug)]
pub struct Corr {
    /// Buffered rows inside the window past the settled region (extremes, first/last scan them).
    pub settled_add: (u64, u64),
    /// Rows to fold out of / into the eager accumulators (tiled groups: into the tile merge).
    pub rem: [(u64, u64); 2],
    pub add: (u64, u64),
    /// The query window's rows: `lo_q..hi_q` (lifetime: `hi_q` only).
    pub lo_q: u64,
    pub hi_q: u64,
}

impl Corr {
    /// No rows to fold in or out, and none past the settled region in the window: the stored
    /// accumulators are the window's (a read at the settled point).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.settled_add.0 >= self.settled_add.1 && !self.corrects()
    }
    /// Some rows to fold out of or into the eager accumulators.
    #[inline]
    pub fn corrects(&self) -> bool {
        self.rem[0].0 < self.rem[0].1 || self.rem[1].0 < self.rem[1].1 || self.add.0 < self.add.1
    }
}

/// Variances computed for one query, by (group, accumulator): var and std of a column share
/// one. A few slots, reused in turn (a plan reading more variances recomputes some: the same
/// answers); cheaper to ask than a growing list behind a `RefCell`.
pub struct VarCache {
    slots: [Cell<(usize, usize, f64)>; 4],
    next: Cell<usize>,
}

impl Default for VarCache {
    fn default() -> Self {
        VarCache {
            slots: [const { Cell::new((usize::MAX, usize::MAX, 0.0)) }; 4],
            next: Cell::new(0),
        }
    }
}

impl VarCache {
    /// The variance of accumulator `key` (group, index), if computed for this query.
    #[inline]
    pub fn get(&self, key: (usize, usize)) -> Option<f64> {
        self.slots
            .iter()
            .map(Cell::get)
            .find(|s| (s.0, s.1) == key)
            .map(|s| s.2)
    }
    /// Remember the variance of accumulator `key` for this query.
    #[inline]
    pub fn put(&self, key: (usize, usize), var: f64) {
        let n = self.next.get();
        self.slots[n % 4].set((key.0, key.1, var));
        self.next.set(n.wrapping_add(1));
    }
}

/// The least and greatest non-null value (in `f64::total_cmp` order) of a column over a run of
/// buffered rows, computed once per query and keyed by (rows from, rows to, column): the min
/// and max outputs of a column, across its windows, share one scan of the rows past the
/// settled region.
pub type ExtremesCache = RefCell<SmallVec<[((u64, u64, usize), Option<(f64, f64)>); 4]>>;

/// How an output function sees one window group at a query instant.
pub struct View<'a> {
    /// The query instant.
    pub t: i64,
    pub window: Option<i64>,
    pub hop: Option<i64>,
    /// The group's accumulator plans.
    pub plans: &'a [AccPlan],
    pub rows: Rows<'a>,
    pub corr: &'a Corr,
    /// Stored accumulators of the group, and those corrected for this query: (group, index, acc).
    pub(crate) group: usize,
    pub(crate) accs: &'a [Acc],
    /// The plan's `GroupPlan::shared` of the group, and every group's stored accumulators.
    pub(crate) shared: &'a [Option<(usize, usize)>],
    pub(crate) stored: &'a [&'a [Acc]],
    pub(crate) views: &'a [(usize, usize, Acc)],
    /// Events of group `g`'s settled tiles with id `>= first`: `tile_events(g, first)`.
    pub(crate) tile_events: &'a dyn Fn(usize, i64) -> u64,
    /// Variances computed for this query, by (group, accumulator): var and std share one.
    pub(crate) var_cache: &'a VarCache,
    /// Row extremes computed for this query (see [`ExtremesCache`]).
    pub(crate) extremes_cache: &'a ExtremesCache,
    /// The strings of the key's string-column words.
    pub texts: &'a crate::text::Texts,
}

impl<'a> View<'a> {
    /// Accumulator `i` of the group, corrected to the query window if it is invertible.
    #[inline]
    pub fn acc(&self, i: usize) -> &'a Acc {
        self.views
            .iter()
            .find(|v| v.0 == self.group && v.1 == i)
            .map_or(&self.accs[i], |v| &v.2)
    }
    /// Accumulator `i` of the group as stored, or the stored accumulator of another group that
    /// answers for it (`GroupPlan::shared`: a longer window's min / max deque).
    #[inline]
    pub fn stored_acc(&self, i: usize) -> &'a Acc {
        match self.shared.get(i).copied().flatten() {
            Some((g, j)) => &self.stored[g][j],
            None => self.acc(i),
        }
    }
    /// Lifetime and tiled groups keep summaries rather than per-event structures.
    pub fn summarizing(&self) -> bool {
        self.window.is_none() || self.hop.is_some()
    }
    /// First instant inside the window of the query.
    pub fn start(&self) -> i64 {
        window_start(self.window, self.hop, self.t)
    }
    /// Rows to fold out of the eager accumulators for this window.
    pub fn removed(&self) -> impl Iterator<Item = &'a [u64]> + 'a {
        self.rows
            .range(self.corr.rem[0])
            .chain(self.rows.range(self.corr.rem[1]))
    }
    /// Rows to fold into the eager accumulators for this window.
    pub fn added(&self) -> impl Iterator<Item = &'a [u64]> + 'a {
        self.rows.range(self.corr.add)
    }
}

/// First instant inside a window (`window`, tiled by `hop`) of a query at `t`.
pub fn window_start(window: Option<i64>, hop: Option<i64>, t: i64) -> i64 {
    match (window, hop) {
        (None, _) => i64::MIN,
        (Some(w), None) => t.saturating_sub(w),
        (Some(w), Some(h)) => crate::time::floor_div(t, h)
            .saturating_mul(h)
            .saturating_sub(w),
    }
}

/// How one output feature reads its group.
#[derive(Clone, Debug)]
pub struct Output {
    pub group: usize,
    /// Its accumulator in the group, if it reads one.
    pub acc: Option<usize>,
    /// Its value column, if any.
    pub col: Option<usize>,
    /// Its parameter (the quantile's q).
    pub q: f64,
    /// Output is an integer count.
    pub integer: bool,
    /// Output is a string: `eval` answers the identity word of a string of the key's
    /// [`crate::text::Texts`] as `f64::from_bits(word)`, or `f64::from_bits(NULL)` for null
    /// ([`text_word`]); the caller turns it into the string.
    pub text: bool,
    pub eval: Eval,
}

/// The identity word a string output (`Output::text`) answered (`None`: null).
#[inline]
pub fn text_word(v: f64) -> Option<u64> {
    let w = v.to_bits();
    (w != crate::input::row::NULL).then_some(w)
}

/// The answer of a string output for `word` (`None`: null).
#[inline]
pub fn text_answer(word: Option<u64>) -> f64 {
    f64::from_bits(word.unwrap_or(crate::input::row::NULL))
}

/// An output function: the feature's value in a group's [`View`] (NaN = null).
pub type Eval = fn(&View<'_>, &Output) -> f64;

/// How an aggregation uses a value column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnUse {
    /// Required, read as numbers.
    Numeric,
    /// Required, numbers or strings (identities).
    Any,
    /// Optional, numbers or strings (`count`: of events, or of a column's non-null values).
    Optional,
    /// Takes no column.
    None,
}

/// An aggregation's parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    None,
    /// `q`, a number in [0, 1].
    Quantile,
    /// `half_life`, a duration.
    HalfLife,
}

/// A parsed parameter value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ParamValue {
    None,
    Quantile(f64),
    /// ns
    HalfLife(i64),
}

/// One aggregation: all the engine knows about it, in one row of [`AGGS`].
pub struct AggDef {
    /// Its name in the document and the Python API.
    pub name: &'static str,
    pub column: ColumnUse,
    pub param: Param,
    /// Output is an integer count.
    pub integer: bool,
    /// The value with no events at all (an unknown key).
    pub empty: f64,
    /// The accumulator it reads in a group: from its column, parameter, and whether the group
    /// summarizes (lifetime or tiled); `None` when it reads row positions only.
    pub acc: fn(Option<usize>, ParamValue, bool) -> Option<AccPlan>,
    pub eval: Eval,
    /// Over a string column (`string_columns`): the output function, whose answer is a
    /// string (see [`Output::text`]), and the string a lifetime window keeps ([`TextPick`]);
    /// `None`: the aggregation gives a number of any column (`count`, `distinct_count`) or
    /// takes numbers only.
    pub text: Option<(Eval, Pick)>,
}

impl std::fmt::Debug for AggDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for AggDef {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

fn moments(col: Option<usize>, squares: bool) -> Option<AccPlan> {
    col.map(|col| AccPlan::Moments { col, squares })
}

/// Every aggregation. The order is the order of the names in error messages.
pub static AGGS: &[AggDef] = &[
    AggDef {
        name: "count",
        column: ColumnUse::Optional,
        param: Param::None,
        integer: true,
        empty: 0.0,
        acc: |col, _, _| col.map(|col| AccPlan::NonNull { col }),
        eval: count::eval,
        text: None,
    },
    AggDef {
        name: "sum",
        column: ColumnUse::Numeric,
        param: Param::None,
        integer: false,
        empty: 0.0,
        acc: |col, _, _| moments(col, false),
        eval: moments::sum,
        text: None,
    },
    AggDef {
        name: "mean",
        column: ColumnUse::Numeric,
        param: Param::None,
        integer: false,
        empty: f64::NAN,
        acc: |col, _, _| moments(col, false),
        eval: moments::mean,
        text: None,
    },
    AggDef {
        name: "min",
        column: ColumnUse::Numeric,
        param: Param::None,
        integer: false,
        empty: f64::NAN,
        acc: |col, _, _| col.map(|col| AccPlan::Extreme { col, max: false }),
        eval: extremes::eval,
        text: Some((extremes::text_min, Pick::Min)),
    },
    AggDef {
        name: "max",
        column: ColumnUse::Numeric,
        param: Param::None,
        integer: false,
        empty: f64::NAN,
        acc: |col, _, _| col.map(|col| AccPlan::Extreme { col, max: true }),
        eval: extremes::eval,
        text: Some((extremes::text_max, Pick::Max)),
    },
    AggDef {
        name: "var",
        column: ColumnUse::Numeric,
        param: Param::None,
        integer: false,
        empty: f64::NAN,
        acc: |col, _, _| moments(col, true),
        eval: moments::var,
        text: None,
    },
    AggDef {
        name: "std",
        column: ColumnUse::Numeric,
        param: Param::None,
        integer: false,
        empty: f64::NAN,
        acc: |col, _, _| moments(col, true),
        eval: moments::std,
        text: None,
    },
    AggDef {
        name: "first",
        column: ColumnUse::Numeric,
        param: Param::None,
        integer: false,
        empty: f64::NAN,
        acc: |col, _, summarizing| summarizing.then_some(AccPlan::Edges { col }),
        eval: edges::first,
        text: Some((edges::text_first, Pick::First)),
    },
    AggDef {
        name: "last",
        column: ColumnUse::Numeric,
        param: Param::None,
        integer: false,
        empty: f64::NAN,
        acc: |col, _, summarizing| summarizing.then_some(AccPlan::Edges { col }),
        eval: edges::last,
        text: Some((edges::text_last, Pick::Last)),
    },
    AggDef {
        name: "distinct_count",
        column: ColumnUse::Any,
        param: Param::None,
        integer: true,
        empty: 0.0,
        acc: |col, _, _| col.map(|col| AccPlan::Distinct { col }),
        eval: distinct::eval,
        text: None,
    },
    AggDef {
        name: "quantile",
        column: ColumnUse::Numeric,
        param: Param::Quantile,
        integer: false,
        empty: f64::NAN,
        acc: |col, _, _| col.map(|col| AccPlan::Sketch { col }),
        eval: quantile::eval,
        text: None,
    },
    AggDef {
        name: "decayed_sum",
        column: ColumnUse::Numeric,
        param: Param::HalfLife,
        integer: false,
        empty: 0.0,
        acc: |col, p, _| match (col, p) {
            (Some(col), ParamValue::HalfLife(half_life)) => Some(AccPlan::Decay { col, half_life }),
            _ => None,
        },
        eval: decay::eval,
        text: None,
    },
    AggDef {
        name: "time_since_last",
        column: ColumnUse::None,
        param: Param::None,
        integer: false,
        empty: f64::NAN,
        acc: |_, _, summarizing| summarizing.then_some(AccPlan::Edges { col: None }),
        eval: edges::time_since_last,
        text: None,
    },
];

/// The row of aggregation `name`.
pub fn lookup(name: &str) -> Option<&'static AggDef> {
    AGGS.iter().find(|d| d.name == name)
}

/// Names of every aggregation, in table order.
pub fn names() -> impl Iterator<Item = &'static str> {
    AGGS.iter().map(|d| d.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exact::ExactSum;
    use bincode::Options;

    /// One accumulator of every family, with some content.
    fn one_of_each() -> Vec<Acc> {
        let mut s1 = ExactSum::new();
        s1.add(1.5);
        let mut s2 = ExactSum::new();
        s2.add_square(1.5);
        let mut distinct = Distinct::default();
        distinct.0.insert(7, 2);
        let mut sketch = Sketch {
            n: 3,
            ..Default::default()
        };
        sketch.buckets.insert(-4, 3);
        let mut cells = DecayCells::default();
        cells.entry(5).add(0.25);
        vec![
            Acc::NonNull(NonNull(3)),
            Acc::Moments(Moments { n: 1, s1, s2 }),
            Acc::Extreme(Extreme([(10i64, 2.5f64)].into_iter().collect())),
            Acc::Distinct(distinct),
            Acc::Sketch(sketch),
            Acc::Decay(cells),
            Acc::Edges(Edges {
                first: Some((1, 0.5)),
                last: None,
            }),
            Acc::TextPick(TextPick(Some((2, 0x0102_0304_0506_0708)))),
        ]
    }

    /// The accumulator enum as it was declared before the families had files of their own
    /// (snapshot versions 1 and 2 were written with it).
    #[derive(Serialize)]
    enum AccBefore {
        NonNull(i64),
        Moments {
            n: i64,
            s1: ExactSum,
            s2: ExactSum,
        },
        Extreme(std::collections::VecDeque<(i64, f64)>),
        Distinct(hashbrown::HashMap<u64, u32>),
        Sketch {
            n: i64,
            buckets: std::collections::BTreeMap<i32, u32>,
        },
        Decay(DecayCells),
        Edges {
            first: Option<(i64, f64)>,
            last: Option<(i64, f64)>,
        },
    }

    fn before(a: &Acc) -> AccBefore {
        match a.clone() {
            Acc::NonNull(n) => AccBefore::NonNull(n.0),
            Acc::Moments(m) => AccBefore::Moments {
                n: m.n,
                s1: m.s1,
                s2: m.s2,
            },
            Acc::Extreme(e) => AccBefore::Extreme(e.0),
            Acc::Distinct(d) => AccBefore::Distinct(d.0),
            Acc::Sketch(s) => AccBefore::Sketch {
                n: s.n,
                buckets: s.buckets,
            },
            Acc::Decay(c) => AccBefore::Decay(c),
            Acc::Edges(e) => AccBefore::Edges {
                first: e.first,
                last: e.last,
            },
            // added after the families had files (snapshot format 4 on): not in the old enum
            Acc::TextPick(_) => unreachable!(),
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn acc_encoding_is_pinned() {
        // The snapshot encoding (little-endian varint bincode) of one accumulator of each
        // variant: the variant's index, then its fields. A change here breaks every snapshot
        // written before it.
        let opts = bincode::DefaultOptions::new()
            .with_little_endian()
            .with_varint_encoding();
        let accs = one_of_each();
        let got: Vec<String> = accs
            .iter()
            .map(|a| hex(&opts.serialize(a).unwrap()))
            .collect();
        let old: Vec<String> = accs
            .iter()
            .take(7)
            .map(|a| hex(&opts.serialize(&before(a)).unwrap()))
            .collect();
        assert_eq!(got[..7], old, "the encoding of the enum it replaced");
        let want = [
            // NonNull(3): index 0, zigzag varint 3
            "0006",
            // Moments { n: 1, s1, s2 }
            "0102010403000000030409000000",
            // Extreme([(10, 2.5)]): length 1, zigzag 10, f64 LE
            "0201140000000000000440",
            // Distinct({7: 2})
            "03010702",
            // Sketch { n: 3, buckets: {-4: 3} }
            "0406010703",
            // Decay({5: 0.25}): as a map
            "05010a030401000000",
            // Edges { first: Some((1, 0.5)), last: None }
            "060102000000000000e03f00",
            // TextPick(Some((2, 0x0102030405060708))): zigzag 2, then the word as a u64 varint
            // (0xfd + 8 bytes LE)
            "070104fd0807060504030201",
        ];
        assert_eq!(got, want);
        // the variant index is the first byte, in declaration order
        for (i, g) in got.iter().enumerate() {
            assert_eq!(&g[..2], format!("{i:02x}"));
        }
        // and each decodes back to the same accumulator
        for (a, bytes) in accs.iter().zip(&got) {
            let raw: Vec<u8> = (0..bytes.len() / 2)
                .map(|i| u8::from_str_radix(&bytes[2 * i..2 * i + 2], 16).unwrap())
                .collect();
            let back: Acc = opts.deserialize(&raw).unwrap();
            assert_eq!(format!("{back:?}"), format!("{a:?}"));
        }
    }

    /// Value words: NaN, infinities, zeros of both signs, huge and tiny magnitudes, the null
    /// word, everyday values, and any bits.
    fn value_word() -> impl proptest::strategy::Strategy<Value = u64> {
        use proptest::prelude::*;
        prop_oneof![
            prop::sample::select(vec![
                f64::NAN.to_bits(),
                f64::INFINITY.to_bits(),
                f64::NEG_INFINITY.to_bits(),
                (-0.0f64).to_bits(),
                0.0f64.to_bits(),
                f64::MAX.to_bits(),
                (-f64::MAX).to_bits(),
                1e300f64.to_bits(),
                f64::MIN_POSITIVE.to_bits(),
                5e-324f64.to_bits(),
                (-3e-310f64).to_bits(),
                crate::input::row::NULL,
            ]),
            (-100_000i64..100_000).prop_map(|c| (c as f64 / 100.0).to_bits()),
            any::<u64>(),
        ]
    }

    proptest::proptest! {
        // `apply_rows` (one dispatch per run, as settling folds runs of rows) leaves exactly the
        // state of `apply` row by row (the general path), for every family, summarizing or
        // not, into and then out of the accumulator: the same snapshot bytes.
        #[test]
        fn apply_rows_is_apply_row_by_row(
            rows in proptest::collection::vec((-5i64..5, value_word(), 0u64..6), 0..60),
            out in 0usize..60,
            lifetime in proptest::bool::ANY,
        ) {
            let opts = bincode::DefaultOptions::new()
                .with_little_endian()
                .with_varint_encoding();
            // rows in time order (equal times included): ts, v, c
            let mut rows = rows;
            rows.sort_by_key(|r| r.0);
            let data: Vec<u64> = rows
                .iter()
                .flat_map(|&(ts, v, c)| [(ts * 1_000_000_000) as u64, v, c])
                .collect();
            let rows_view = Rows { data: &data, stride: 3, off: 0, base: 0 };
            let n = rows.len() as u64;
            let k = (out as u64).min(n);
            proptest::prop_assert!(rows_view.run((0, n)).eq(rows_view.range((0, n))));
            let plans = [
                AccPlan::NonNull { col: 0 },
                AccPlan::Moments { col: 0, squares: true },
                AccPlan::Moments { col: 0, squares: false },
                AccPlan::Extreme { col: 0, max: false },
                AccPlan::Extreme { col: 0, max: true },
                AccPlan::Distinct { col: 1 },
                AccPlan::Distinct { col: 0 },
                AccPlan::Sketch { col: 0 },
                AccPlan::Decay { col: 0, half_life: 600_000_000_000 },
                AccPlan::Edges { col: Some(0) },
                AccPlan::Edges { col: None },
                AccPlan::TextPick { col: 0, pick: Pick::Last },
            ];
            for p in &plans {
                let (mut a, mut b) = (Acc::new(p), Acc::new(p));
                for row in rows_view.range((0, n)) {
                    a.apply(p, row, 1, lifetime);
                }
                b.apply_rows(p, rows_view.run((0, n)), 1, lifetime);
                // `apply_if_eager` (an insert's one dispatch) is `apply` of sliding windows'
                // eager accumulators, and nothing for the others
                let (mut c, mut d) = (Acc::new(p), Acc::new(p));
                for row in rows_view.range((0, n)) {
                    c.apply_if_eager(p, row, 1);
                    if d.eager() {
                        d.apply(p, row, 1, false);
                    }
                }
                if a.eager() {
                    for row in rows_view.range((0, k)) {
                        a.apply(p, row, -1, lifetime);
                        c.apply_if_eager(p, row, -1);
                        d.apply(p, row, -1, false);
                    }
                    b.apply_rows(p, rows_view.run((0, k)), -1, lifetime);
                }
                // a distinct map's bytes follow its (per-map random) hash order: by entry
                let canon = |acc: &Acc| match acc {
                    Acc::Distinct(d) => {
                        let mut e: Vec<(u64, u32)> = d.0.iter().map(|(k, c)| (*k, *c)).collect();
                        e.sort_unstable();
                        format!("{e:?}")
                    }
                    _ => hex(&opts.serialize(acc).unwrap()),
                };
                proptest::prop_assert_eq!(canon(&a), canon(&b), "{:?}", p);
                proptest::prop_assert_eq!(canon(&c), canon(&d), "{:?}", p);
            }
        }
    }

    #[test]
    fn every_aggregation_is_in_the_table_once() {
        let mut names: Vec<&str> = names().collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
        assert!(lookup("count").is_some() && lookup("median").is_none());
    }
}

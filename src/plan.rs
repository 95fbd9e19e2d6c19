//! A [`Spec`] compiled into what the engine executes: which input columns to read, one group of
//! accumulators per distinct window, and how each output feature reads them.

use crate::spec::{Agg, Spec};

/// How an input value column is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColKind {
    /// Read as float64 (ints, floats, bools).
    Numeric,
    /// Only counted or distinct-counted: numbers or strings.
    Any,
}

#[derive(Clone, Debug)]
pub struct ColumnPlan {
    pub name: String,
    pub kind: ColKind,
}

/// One accumulator inside a window group. `col` indexes [`Plan::columns`].
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
}

#[derive(Clone, Debug)]
pub struct GroupPlan {
    pub window: Option<i64>,
    /// Tile length of a tiled window.
    pub hop: Option<i64>,
    pub accs: Vec<AccPlan>,
}

impl GroupPlan {
    /// Lifetime and tiled groups keep summaries (single extremes, first/last edges) rather
    /// than per-event structures.
    pub fn summarizing(&self) -> bool {
        self.window.is_none() || self.hop.is_some()
    }

    /// First instant inside the window of a query at `t`.
    pub fn start(&self, t: i64) -> i64 {
        match (self.window, self.hop) {
            (None, _) => i64::MIN,
            (Some(w), None) => t.saturating_sub(w),
            (Some(w), Some(h)) => crate::time::floor_div(t, h)
                .saturating_mul(h)
                .saturating_sub(w),
        }
    }
}

/// How one output feature is computed from its group.
#[derive(Clone, Debug)]
pub enum OutKind {
    Count,
    CountCol(usize),
    Sum(usize),
    Mean(usize),
    Var(usize),
    Std(usize),
    Min(usize),
    Max(usize),
    First { col: usize, edges: Option<usize> },
    Last { col: usize, edges: Option<usize> },
    Distinct(usize),
    Quantile(usize, f64),
    Decayed(usize),
    TimeSinceLast { edges: Option<usize> },
}

#[derive(Clone, Debug)]
pub struct Output {
    pub group: usize,
    pub kind: OutKind,
    pub integer: bool,
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub spec: Spec,
    pub columns: Vec<ColumnPlan>,
    pub groups: Vec<GroupPlan>,
    pub outputs: Vec<Output>,
    /// Largest finite window (0 when every feature is lifetime).
    pub max_window: i64,
    /// Feature values of an entity with no events (independent of the query time).
    pub empty: Vec<f64>,
}

impl Plan {
    pub fn new(spec: Spec) -> Plan {
        let mut columns: Vec<ColumnPlan> = Vec::new();
        let mut col_index = |name: &str, kind: ColKind| -> usize {
            if let Some(i) = columns.iter().position(|c| c.name == name) {
                if kind == ColKind::Numeric {
                    columns[i].kind = ColKind::Numeric;
                }
                i
            } else {
                columns.push(ColumnPlan {
                    name: name.to_string(),
                    kind,
                });
                columns.len() - 1
            }
        };
        let mut groups: Vec<GroupPlan> = Vec::new();
        let mut outputs = Vec::new();
        for f in &spec.features {
            let g = match groups
                .iter()
                .position(|g| g.window == f.window && g.hop == f.hop)
            {
                Some(g) => g,
                None => {
                    groups.push(GroupPlan {
                        window: f.window,
                        hop: f.hop,
                        accs: Vec::new(),
                    });
                    groups.len() - 1
                }
            };
            let col = f.column.as_deref().map(|c| {
                col_index(
                    c,
                    if f.agg.is_numeric() {
                        ColKind::Numeric
                    } else {
                        ColKind::Any
                    },
                )
            });
            let lifetime = f.window.is_none() || f.hop.is_some();
            let group = &mut groups[g];
            let mut acc = |want: AccPlan| -> usize {
                // Moments with squares also serve a request without them, and vice versa.
                if let AccPlan::Moments { col, squares } = want {
                    for (i, a) in group.accs.iter_mut().enumerate() {
                        if let AccPlan::Moments { col: c, squares: s } = a {
                            if *c == col {
                                *s |= squares;
                                return i;
                            }
                        }
                    }
                }
                if let Some(i) = group.accs.iter().position(|a| *a == want) {
                    return i;
                }
                group.accs.push(want);
                group.accs.len() - 1
            };
            let kind = match (&f.agg, col) {
                (Agg::Count, None) => OutKind::Count,
                (Agg::Count, Some(c)) => OutKind::CountCol(acc(AccPlan::NonNull { col: c })),
                (Agg::Sum, Some(c)) => OutKind::Sum(acc(AccPlan::Moments {
                    col: c,
                    squares: false,
                })),
                (Agg::Mean, Some(c)) => OutKind::Mean(acc(AccPlan::Moments {
                    col: c,
                    squares: false,
                })),
                (Agg::Var, Some(c)) => OutKind::Var(acc(AccPlan::Moments {
                    col: c,
                    squares: true,
                })),
                (Agg::Std, Some(c)) => OutKind::Std(acc(AccPlan::Moments {
                    col: c,
                    squares: true,
                })),
                (Agg::Min, Some(c)) => OutKind::Min(acc(AccPlan::Extreme { col: c, max: false })),
                (Agg::Max, Some(c)) => OutKind::Max(acc(AccPlan::Extreme { col: c, max: true })),
                (Agg::First, Some(c)) => OutKind::First {
                    col: c,
                    edges: lifetime.then(|| acc(AccPlan::Edges { col: Some(c) })),
                },
                (Agg::Last, Some(c)) => OutKind::Last {
                    col: c,
                    edges: lifetime.then(|| acc(AccPlan::Edges { col: Some(c) })),
                },
                (Agg::DistinctCount, Some(c)) => {
                    OutKind::Distinct(acc(AccPlan::Distinct { col: c }))
                }
                (Agg::Quantile(q), Some(c)) => {
                    OutKind::Quantile(acc(AccPlan::Sketch { col: c }), *q)
                }
                (Agg::DecayedSum(h), Some(c)) => OutKind::Decayed(acc(AccPlan::Decay {
                    col: c,
                    half_life: *h,
                })),
                (Agg::TimeSinceLast, _) => OutKind::TimeSinceLast {
                    edges: lifetime.then(|| acc(AccPlan::Edges { col: None })),
                },
                // Spec validation guarantees a column for every other aggregation.
                (_, None) => OutKind::Count,
            };
            outputs.push(Output {
                group: g,
                kind,
                integer: f.agg.is_integer(),
            });
        }
        let max_window = spec
            .features
            .iter()
            .filter_map(|f| f.window)
            .max()
            .unwrap_or(0);
        let mut plan = Plan {
            spec,
            columns,
            groups,
            outputs,
            max_window,
            empty: Vec::new(),
        };
        plan.empty = crate::state::KeyState::new(&plan, i64::MIN).evaluate(&plan, 0);
        plan
    }

    pub fn n_features(&self) -> usize {
        self.outputs.len()
    }
}

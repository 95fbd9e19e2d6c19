//! A [`Spec`] compiled into what the engine executes: which input columns to read, one group of
//! accumulators per distinct window, and how each output feature reads them.

use crate::agg::ParamValue;
pub use crate::agg::{AccPlan, Output};
use crate::spec::Spec;

/// How an input value column is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColKind {
    /// Read as float64 (ints, floats, bools).
    Numeric,
    /// Only counted or distinct-counted: numbers or strings.
    Any,
    /// Declared in `string_columns`: strings (or nulls) only, and the input keeps their bytes
    /// ([`crate::text::Texts`]).
    Text,
}

#[derive(Clone, Debug)]
pub struct ColumnPlan {
    pub name: String,
    pub kind: ColKind,
}

#[derive(Clone, Debug)]
pub struct GroupPlan {
    pub window: Option<i64>,
    /// Tile length of a tiled window.
    pub hop: Option<i64>,
    pub accs: Vec<AccPlan>,
    /// Per accumulator: `Some((group, acc))` when another group's stored accumulator answers
    /// for it and its own is left empty (see [`share_extremes`]); `None`: its own.
    pub shared: Vec<Option<(usize, usize)>>,
    /// Which accumulators each step of settling touches (derived from `accs`, `window` and
    /// `hop`).
    pub steps: Steps,
}

/// The accumulators (indices into [`GroupPlan::accs`]) that each step of settling a group
/// touches, so that settling walks only those (`state.rs`).
#[derive(Clone, Debug, Default)]
pub struct Steps {
    /// Not eager: folded into the settled region as rows settle (but for deques another
    /// group's answer for, [`GroupPlan::shared`]).
    pub settle: Vec<usize>,
    /// Eager: folded out as rows leave the eager region.
    pub eager: Vec<usize>,
    /// Those whose `Acc::settled` does something: extremes of sliding windows, decayed sums of
    /// lifetime windows.
    pub after: Vec<usize>,
    /// String picks (lifetime windows).
    pub texts: Vec<usize>,
}

impl Steps {
    fn of(g: &GroupPlan) -> Steps {
        let mut s = Steps::default();
        let sliding = g.window.is_some() && g.hop.is_none();
        for (i, a) in g.accs.iter().enumerate() {
            if crate::agg::Acc::new(a).eager() {
                s.eager.push(i);
            } else {
                s.settle.push(i);
            }
            let after = match a {
                AccPlan::Extreme { .. } => sliding,
                AccPlan::Decay { .. } => g.window.is_none(),
                _ => false,
            };
            if after {
                s.after.push(i);
            }
            if matches!(a, AccPlan::TextPick { .. }) {
                s.texts.push(i);
            }
        }
        s
    }
}

impl GroupPlan {
    /// Lifetime and tiled groups keep summaries (single extremes, first/last edges) rather
    /// than per-event structures.
    pub fn summarizing(&self) -> bool {
        self.window.is_none() || self.hop.is_some()
    }

    /// First instant inside the window of a query at `t`.
    pub fn start(&self, t: i64) -> i64 {
        crate::agg::window_start(self.window, self.hop, t)
    }
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
    /// Some column is a `string_columns` column ([`ColKind::Text`]).
    text_columns: bool,
}

/// One min / max deque per (column, min | max) for all the sliding windows of that column: a
/// sliding window's deque is the suffix (entries at or after its start) of the deque of any
/// longer sliding window of the same column, since whether an entry stays in a monotonic deque
/// depends only on the events after it (both fold the same rows in the same order), and expiry
/// only drops entries older than the window. So every sliding (untiled) group's `Extreme`
/// accumulator reads the longest such window's deque (`GroupPlan::shared`), and only that one
/// is folded into: with 1h and 24h windows, two deques per column instead of four.
fn share_extremes(groups: &mut [GroupPlan]) {
    let sliding = |g: &GroupPlan| g.hop.is_none() && g.window.is_some();
    let mut shared: Vec<Vec<Option<(usize, usize)>>> = Vec::with_capacity(groups.len());
    for g in groups.iter() {
        let mut row = vec![None; g.accs.len()];
        if sliding(g) {
            for (i, a) in g.accs.iter().enumerate() {
                if !matches!(a, AccPlan::Extreme { .. }) {
                    continue;
                }
                // the longest other sliding window holding the same deque
                row[i] = groups
                    .iter()
                    .enumerate()
                    .filter(|(_, o)| sliding(o) && o.window > g.window)
                    .filter_map(|(gj, o)| {
                        o.accs
                            .iter()
                            .position(|b| b == a)
                            .map(|j| (gj, j, o.window))
                    })
                    .max_by_key(|&(_, _, w)| w)
                    .map(|(gj, j, _)| (gj, j));
            }
        }
        shared.push(row);
    }
    for (g, s) in groups.iter_mut().zip(shared) {
        g.shared = s;
        g.steps = Steps::of(g);
    }
}

impl Plan {
    pub fn new(spec: Spec) -> Plan {
        let mut columns: Vec<ColumnPlan> = Vec::new();
        let mut col_index = |name: &str, kind: ColKind| -> usize {
            let kind = if spec.is_string_column(name) {
                ColKind::Text
            } else {
                kind
            };
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
                        shared: Vec::new(),
                        steps: Steps::default(),
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
            let summarizing = f.window.is_none() || f.hop.is_some();
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
            let def = f.agg.def;
            // a string output (validated: no tiles): sliding windows scan the buffered rows, a
            // lifetime window keeps its pick of the settled region (`TextPick`)
            let text = match (f.column.as_deref(), def.text) {
                (Some(c), Some(t)) if spec.is_string_column(c) => Some(t),
                _ => None,
            };
            outputs.push(Output {
                group: g,
                acc: match (text, col) {
                    (Some((_, pick)), Some(col)) if f.window.is_none() => {
                        Some(acc(AccPlan::TextPick { col, pick }))
                    }
                    (Some(_), _) => None,
                    (None, _) => (def.acc)(col, f.agg.param, summarizing).map(&mut acc),
                },
                col,
                q: match f.agg.param {
                    ParamValue::Quantile(q) => q,
                    _ => 0.0,
                },
                integer: def.integer,
                text: text.is_some(),
                eval: text.map_or(def.eval, |t| t.0),
            });
        }
        share_extremes(&mut groups);
        let max_window = spec
            .features
            .iter()
            .filter_map(|f| f.window)
            .max()
            .unwrap_or(0);
        // an entity with no events: each aggregation's empty value (from the table, not from
        // evaluating a state: the plan comes before the state; `state` tests hold the two equal)
        let empty = spec
            .features
            .iter()
            .zip(&outputs)
            .map(|(f, o)| {
                if o.text {
                    crate::agg::text_answer(None)
                } else {
                    f.agg.def.empty
                }
            })
            .collect();
        let text_columns = columns.iter().any(|c| c.kind == ColKind::Text);
        Plan {
            text_columns,
            spec,
            columns,
            groups,
            outputs,
            max_window,
            empty,
        }
    }

    /// Whether any output is a string (`Output::text`).
    pub fn has_text(&self) -> bool {
        self.outputs.iter().any(|o| o.text)
    }

    /// Whether any column holds strings whose bytes the state keeps.
    #[inline]
    pub fn has_text_columns(&self) -> bool {
        self.text_columns
    }

    pub fn n_features(&self) -> usize {
        self.outputs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settling_steps_list_the_accumulators_each_step_touches() {
        // the benchmark's feature set: 1h and 24h windows (min / max of 1h read the 24h
        // deques), a string column, lifetime last / time_since_last / decayed sum / first of
        // a string, and a tiled window
        use serde_json::{json, Value};
        let mut feats: Vec<Value> = Vec::new();
        for w in ["1h", "24h"] {
            for a in ["count", "sum", "mean", "min", "max", "var", "std"] {
                let mut f = json!({"agg": a, "window": w});
                if a != "count" {
                    f["column"] = json!("v");
                }
                feats.push(f);
            }
        }
        feats.push(json!({"agg": "distinct_count", "window": "24h", "column": "c"}));
        feats
            .push(json!({"agg": "decayed_sum", "window": "24h", "column": "v", "half_life": "1h"}));
        feats.push(json!({"agg": "last", "column": "v"}));
        feats.push(json!({"agg": "time_since_last"}));
        feats.push(json!({"agg": "decayed_sum", "column": "v", "half_life": "1h"}));
        feats.push(json!({"agg": "first", "column": "c"}));
        feats.push(json!({"agg": "max", "window": "1h", "hop": "15m", "column": "v"}));
        for (i, f) in feats.iter_mut().enumerate() {
            f["name"] = json!(format!("f{i}"));
        }
        let doc = json!({
            "version": 1, "entity": "k", "timestamp": "ts", "string_columns": ["c"],
            "features": feats,
        })
        .to_string();
        let plan = Plan::new(Spec::from_json(&doc).unwrap());
        // settle, eager, after, texts
        type Lists<'a> = (&'a [usize], &'a [usize], &'a [usize], &'a [usize]);
        let steps: Vec<Lists<'_>> = plan
            .groups
            .iter()
            .map(|g| {
                let s = &g.steps;
                (&s.settle[..], &s.eager[..], &s.after[..], &s.texts[..])
            })
            .collect();
        let accs: Vec<&[AccPlan]> = plan.groups.iter().map(|g| &g.accs[..]).collect();
        use AccPlan as A;
        let (v, c) = (0, 1);
        let m = A::Moments {
            col: v,
            squares: true,
        };
        let (lo, hi) = (
            A::Extreme { col: v, max: false },
            A::Extreme { col: v, max: true },
        );
        assert_eq!(
            accs,
            [
                &[m.clone(), lo.clone(), hi.clone()][..],
                &[
                    m,
                    lo,
                    hi.clone(),
                    A::Distinct { col: c },
                    A::Decay {
                        col: v,
                        half_life: 3_600_000_000_000
                    }
                ],
                &[
                    A::Edges { col: Some(v) },
                    A::Edges { col: None },
                    A::Decay {
                        col: v,
                        half_life: 3_600_000_000_000
                    },
                    A::TextPick {
                        col: c,
                        pick: crate::agg::Pick::First
                    },
                ],
                &[hi],
            ]
        );
        let none: &[usize] = &[];
        assert_eq!(
            steps,
            [
                // 1h: its deques are the 24h ones (`shared`: settling skips them)
                (&[1, 2][..], &[0][..], &[1, 2][..], none),
                (&[1, 2][..], &[0, 3, 4][..], &[1, 2][..], none),
                // lifetime: edges fold in, the decayed sum ages, the pick folds its strings
                (&[0, 1, 3][..], &[2][..], &[2][..], &[3][..]),
                // tiled: extremes are read from the rows; nothing expires
                (&[0][..], none, none, none),
            ]
        );
    }
}

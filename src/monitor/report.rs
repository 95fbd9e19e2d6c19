//! The batch report: every metric of every reference column per period `[start, start + P)`,
//! periods aligned to the epoch (`start` a multiple of `P`), the same periods as the online
//! monitor's windows when `window == step == P`. Periods without rows are not reported.

use std::collections::HashMap;

use rayon::prelude::*;

use super::counts::Counts;
use super::metrics::{compute, Metrics};
use super::reference::Reference;
use crate::error::{Error, Result};
use crate::time::floor_div;

/// One row of the report.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportRow {
    /// Start of the period (ns); None when the report has one period of all rows.
    pub period_start: Option<i64>,
    pub column: usize,
    pub metrics: Metrics,
}

/// The period of each row: `(period starts in increasing order, slot of each row)`.
fn periods(times: &[i64], period: i64) -> (Vec<i64>, Vec<u32>) {
    let mut slot_of: HashMap<i64, u32> = HashMap::new();
    let mut starts: Vec<i64> = Vec::new();
    let mut slots = Vec::with_capacity(times.len());
    let mut last: Option<(i64, u32)> = None;
    for &t in times {
        let k = floor_div(t, period);
        let s = match last {
            Some((lk, ls)) if lk == k => ls,
            _ => {
                let s = *slot_of.entry(k).or_insert_with(|| {
                    starts.push(k);
                    (starts.len() - 1) as u32
                });
                last = Some((k, s));
                s
            }
        };
        slots.push(s);
    }
    // renumber slots in time order
    let mut order: Vec<u32> = (0..starts.len() as u32).collect();
    order.sort_by_key(|&s| starts.get(s as usize).copied().unwrap_or(0));
    let mut rank = vec![0u32; starts.len()];
    for (r, &s) in order.iter().enumerate() {
        if let Some(x) = rank.get_mut(s as usize) {
            *x = r as u32;
        }
    }
    for s in &mut slots {
        *s = rank.get(*s as usize).copied().unwrap_or(0);
    }
    let sorted: Vec<i64> = order
        .iter()
        .map(|&s| {
            starts
                .get(s as usize)
                .copied()
                .unwrap_or(0)
                .saturating_mul(period)
        })
        .collect();
    (sorted, slots)
}

/// The report of coded rows (`codes[column][row]`, from [`super::read::codes`]). `times` and
/// `period` (ns): rows grouped by period; None: one period of every row.
pub fn report(
    reference: &Reference,
    codes: &[Vec<u32>],
    times: Option<&[i64]>,
    period: Option<i64>,
) -> Result<Vec<ReportRow>> {
    if codes.len() != reference.columns.len() {
        return Err(Error::spec(
            "codes",
            format!(
                "expected {} columns, got {}",
                reference.columns.len(),
                codes.len()
            ),
        ));
    }
    let rows = codes.first().map_or(0, |c| c.len());
    let (starts, slots): (Vec<Option<i64>>, Vec<u32>) = match (times, period) {
        (Some(t), Some(p)) => {
            if p <= 0 {
                return Err(Error::spec("by", format!("must be > 0, got {p} ns")));
            }
            if t.len() != rows {
                return Err(Error::spec(
                    "timestamp",
                    format!("expected {rows} times, got {}", t.len()),
                ));
            }
            let (s, slots) = periods(t, p);
            (s.into_iter().map(Some).collect(), slots)
        }
        (None, None) => (vec![None], vec![0; rows]),
        _ => {
            return Err(Error::spec(
                "by",
                "a report by period needs both the period and the time column",
            ))
        }
    };
    // per column: counts per period (columns in parallel)
    let per_col: Vec<Vec<Metrics>> = crate::pool::install(|| {
        reference
            .columns
            .par_iter()
            .zip(codes.par_iter())
            .map(|(col, codes)| {
                let mut counts = vec![Counts::new(col.n_bins()); starts.len()];
                for (&c, &s) in codes.iter().zip(&slots) {
                    if let Some(cnt) = counts.get_mut(s as usize) {
                        cnt.add(c);
                    }
                }
                counts.iter().map(|c| compute(col, c)).collect()
            })
            .collect()
    });
    let mut out = Vec::with_capacity(starts.len() * reference.columns.len());
    for (p, start) in starts.iter().enumerate() {
        for (ci, ms) in per_col.iter().enumerate() {
            if let Some(m) = ms.get(p) {
                if m.rows > 0 || start.is_none() {
                    out.push(ReportRow {
                        period_start: *start,
                        column: ci,
                        metrics: m.clone(),
                    });
                }
            }
        }
    }
    Ok(out)
}

//! rtml::monitor: the online monitor's windows equal the batch report's periods bit for bit
//! for any arrival order within the lateness, its state stays bounded over a long replay, the
//! reference document refuses what it cannot read, and a trigger fires once on a shift.

use proptest::prelude::*;
use rtml::monitor::counts::numeric_code;
use rtml::monitor::reference::{ColumnRef, REFERENCE_VERSION};
use rtml::monitor::{report, Metric, Monitor, Reference, Transition, TriggerSpec};

/// A deterministic pseudo-random stream (splitmix64).
fn rng(seed: u64) -> impl FnMut() -> f64 {
    let mut s = seed;
    move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn reference(n: usize) -> Reference {
    let mut r = rng(7);
    let x: Vec<f64> = (0..n).map(|_| r() * 10.0).collect();
    let cat = ["a", "b", "c", "a", "a", "b"];
    let c = ColumnRef::fit_categorical("c", (0..n).map(|i| Some(cat[i % cat.len()])), 10).unwrap();
    Reference::new(
        None,
        n as u64,
        vec![ColumnRef::fit_numeric("x", &x, 20).unwrap(), c],
    )
    .unwrap()
}

/// Codes `[column][row]` of rows (x, category index or None).
fn codes(r: &Reference, rows: &[(i64, f64, Option<&str>)]) -> Vec<Vec<u32>> {
    let ColumnRef::Numeric {
        edges, min, max, ..
    } = &r.columns[0]
    else {
        panic!()
    };
    let x = rows
        .iter()
        .map(|&(_, v, _)| numeric_code(edges, min.unwrap(), max.unwrap(), v))
        .collect();
    let c = rows
        .iter()
        .map(|&(_, _, s)| match s {
            Some(s) => r.columns[1].category_code(s),
            None => rtml::monitor::counts::NULL_CODE,
        })
        .collect();
    vec![x, c]
}

const STEP: i64 = 10;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Rows shuffled within the lateness, in batches: every closed window equals the report's
    /// period of the same rows, bit for bit, and the triggers fire the same events.
    #[test]
    fn online_equals_batch_in_any_order(
        raw in prop::collection::vec((0i64..400, -5.0f64..15.0, 0usize..5), 1..300),
        seed in any::<u64>(),
        batch in 1usize..40,
    ) {
        let r = reference(2000);
        let cats = [Some("a"), Some("b"), Some("z"), None, Some("c")];
        let mut rows: Vec<(i64, f64, Option<&str>)> =
            raw.iter().map(|&(t, x, c)| (t, if c == 3 { f64::NAN } else { x }, cats[c])).collect();
        rows.sort_by_key(|r| r.0);
        // shuffle: each row moves back by less than the lateness
        let lateness = 30;
        let mut g = rng(seed);
        let mut keyed: Vec<(f64, usize)> =
            rows.iter().enumerate().map(|(i, r)| (r.0 as f64 + g() * (lateness as f64 - 1.0), i)).collect();
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
        let arrived: Vec<_> = keyed.iter().map(|&(_, i)| rows[i]).collect();

        let spec = TriggerSpec { metric: Metric::Psi, column: 0, above: 0.5, below: 0.2,
            for_: 0, cooldown: 0, min_samples: 1, low: false };
        let run = |order: &[(i64, f64, Option<&str>)]| {
            let mut m = Monitor::new(r.clone(), STEP, STEP, lateness).unwrap();
            m.add_trigger(spec.clone()).unwrap();
            let mut fired = Vec::new();
            for chunk in order.chunks(batch) {
                let t: Vec<i64> = chunk.iter().map(|r| r.0).collect();
                fired.extend(m.update(&codes(&r, chunk), &t).unwrap());
            }
            prop_assert_eq!(m.stats().rows_late, 0);
            fired.extend(m.advance(10_000));
            Ok((m, fired))
        };
        let (_, in_order) = run(&rows)?;
        let (m, shuffled) = run(&arrived)?;
        prop_assert_eq!(&in_order, &shuffled);

        let t: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let rep = report(&r, &codes(&r, &rows), Some(&t), Some(STEP)).unwrap();
        // a fresh monitor that never closed: every window is still answerable
        let mut open = Monitor::new(r.clone(), STEP, STEP, 1_000_000).unwrap();
        for chunk in arrived.chunks(batch) {
            let t: Vec<i64> = chunk.iter().map(|r| r.0).collect();
            open.update(&codes(&r, chunk), &t).unwrap();
        }
        for row in &rep {
            let start = row.period_start.unwrap();
            let online = open.values(start + STEP).unwrap();
            prop_assert_eq!(&online[row.column], &row.metrics);
        }
        prop_assert!(m.values(0).is_err()); // evicted long ago
    }
}

#[test]
fn state_stays_bounded_over_a_long_replay() {
    let r = reference(1000);
    let (window, step, lateness) = (600, 60, 120);
    let mut m = Monitor::new(r.clone(), window, step, lateness).unwrap();
    let mut g = rng(3);
    let mut max_panes = 0;
    for k in 0..20_000i64 {
        let rows: Vec<(i64, f64, Option<&str>)> = (0..20)
            .map(|_| (k * 5 + (g() * 100.0) as i64, g() * 10.0, Some("a")))
            .collect();
        let t: Vec<i64> = rows.iter().map(|r| r.0).collect();
        m.update(&codes(&r, &rows), &t).unwrap();
        max_panes = max_panes.max(m.stats().panes);
    }
    // (W + lateness) / step + 2 panes at most, whatever the number of rows
    assert!(
        max_panes <= ((window + lateness) / step + 2) as usize,
        "{max_panes}"
    );
    assert_eq!(m.stats().rows_applied + m.stats().rows_late, 400_000);
}

#[test]
fn a_shift_fires_once_and_a_stable_replay_never() {
    let r = reference(20_000);
    let spec = TriggerSpec {
        metric: Metric::Psi,
        column: 0,
        above: 0.25,
        below: 0.1,
        for_: 30,
        cooldown: 1000,
        min_samples: 100,
        low: false,
    };
    let replay = |shift_at: Option<i64>| {
        let mut m = Monitor::new(r.clone(), 60, 10, 5).unwrap();
        m.add_trigger(spec.clone()).unwrap();
        let mut g = rng(11);
        let mut fired = Vec::new();
        for t in 0..3000i64 {
            let shifted = shift_at.is_some_and(|s| t >= s);
            let rows: Vec<(i64, f64, Option<&str>)> = (0..20)
                .map(|_| {
                    (
                        t,
                        if shifted {
                            5.0 + g() * 10.0
                        } else {
                            g() * 10.0
                        },
                        Some("a"),
                    )
                })
                .collect();
            fired.extend(m.update(&codes(&r, &rows), &[t; 20]).unwrap());
        }
        fired.extend(m.advance(1_000_000));
        (fired, m.triggers()[0].counters.clone())
    };
    let (stable, counters) = replay(None);
    assert!(stable.is_empty(), "{stable:?}");
    assert!(counters.evaluated > 250);
    let (shifted, _) = replay(Some(1500));
    assert_eq!(shifted.len(), 1, "{shifted:?}");
    assert_eq!(shifted[0].transition, Transition::Enter);
    // the first window whose PSI is above 0.25, plus for_ of event time
    assert!(shifted[0].window_end > 1500 && shifted[0].window_end <= 1600);
}

#[test]
fn the_document_refuses_newer_versions_and_bad_counts() {
    let r = reference(100);
    let text = r.to_json().unwrap();
    assert_eq!(Reference::from_json(&text).unwrap(), r);
    let current = format!("\"version\":{REFERENCE_VERSION}");
    assert!(text.contains(&current), "{text}");
    let newer = text.replace(&current, &format!("\"version\":{}", REFERENCE_VERSION + 1));
    let e = Reference::from_json(&newer).unwrap_err().to_string();
    assert!(e.contains("newer"), "{e}");
    let extra = text.replacen("\"rows\":100", "\"rows\":100,\"surprise\":1", 1);
    assert!(Reference::from_json(&extra).is_err());
    let wrong = text.replacen("\"rows\":100", "\"rows\":101", 1);
    let e = Reference::from_json(&wrong).unwrap_err().to_string();
    assert!(e.contains("101"), "{e}");
}

#[test]
fn the_state_document_continues_exactly() {
    let r = reference(1000);
    let spec = TriggerSpec {
        metric: Metric::OutOfRangeRate,
        column: 0,
        above: 0.3,
        below: 0.3,
        for_: 0,
        cooldown: 0,
        min_samples: 1,
        low: false,
    };
    let mut a = Monitor::new(r.clone(), 20, 10, 5).unwrap();
    a.add_trigger(spec).unwrap();
    let mut g = rng(5);
    let mut batches = Vec::new();
    for k in 0..100i64 {
        let rows: Vec<(i64, f64, Option<&str>)> = (0..10)
            .map(|_| (k * 3 + (g() * 4.0) as i64, g() * 14.0, Some("b")))
            .collect();
        batches.push(rows);
    }
    for rows in &batches[..50] {
        let t: Vec<i64> = rows.iter().map(|r| r.0).collect();
        a.update(&codes(&r, rows), &t).unwrap();
    }
    let mut b = Monitor::from_json(&a.to_json().unwrap()).unwrap();
    for rows in &batches[50..] {
        let t: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let fa = a.update(&codes(&r, rows), &t).unwrap();
        assert_eq!(fa, b.update(&codes(&r, rows), &t).unwrap());
    }
    assert_eq!(a.to_json().unwrap(), b.to_json().unwrap());
    assert!(a.triggers()[0].counters.entered > 0);
    let newer = a
        .to_json()
        .unwrap()
        .replacen("\"version\":2", "\"version\":3", 1);
    assert!(Monitor::from_json(&newer)
        .unwrap_err()
        .to_string()
        .contains("newer"));
}

#[test]
fn a_version_1_state_document_is_still_read() {
    // version 1 (before low-is-bad triggers): no `low` field, every trigger high-is-bad
    let r = reference(1000);
    let spec = TriggerSpec {
        metric: Metric::Psi,
        column: 0,
        above: 0.3,
        below: 0.1,
        for_: 0,
        cooldown: 0,
        min_samples: 1,
        low: false,
    };
    let mut a = Monitor::new(r, 20, 10, 5).unwrap();
    a.add_trigger(spec).unwrap();
    let v2 = a.to_json().unwrap();
    assert!(
        !v2.contains("\"low\""),
        "a high-is-bad trigger writes no `low` field"
    );
    let v1 = v2.replacen("\"version\":2", "\"version\":1", 1);
    let b = Monitor::from_json(&v1).unwrap();
    assert_eq!(b.to_json().unwrap(), v2);
    assert!(!b.triggers()[0].spec.low);
}

//! rtml::learn: learners are deterministic (learn_many == loop of learn_one, bit for bit; the
//! document round-trips the exact state), and the label join's example sequence does not depend
//! on arrival order within the allowed lateness.

use proptest::prelude::*;
use rtml::learn::label_join::{LabelJoin, OnTimeout, Outcome, RequestId};
use rtml::learn::{ClassLabel, Linear, Loss, Optimizer, Schedule, Softmax};

fn optimizers() -> impl Strategy<Value = Optimizer> {
    prop_oneof![
        (0.01f64..1.0, 0.0f64..2.0, 0.0f64..0.5, 0.0f64..0.5).prop_map(|(alpha, beta, l1, l2)| {
            Optimizer::Ftrl {
                alpha,
                beta,
                l1,
                l2,
            }
        }),
        (0.001f64..0.5, 0.0f64..0.1, 0.0f64..0.1).prop_map(|(eta0, l1, l2)| Optimizer::Sgd {
            schedule: Schedule::Constant { eta0 },
            l1,
            l2
        }),
        (0.001f64..0.5, 0.0f64..1.0, 0.0f64..0.1, 0.0f64..0.1).prop_map(
            |(eta0, power_t, l1, l2)| {
                Optimizer::Sgd {
                    schedule: Schedule::InvScaling { eta0, power_t },
                    l1,
                    l2,
                }
            }
        ),
    ]
}

fn data(k: usize) -> impl Strategy<Value = (Vec<f64>, Vec<f64>)> {
    (1usize..40).prop_flat_map(move |rows| {
        (
            prop::collection::vec(-3.0f64..3.0, rows * k),
            prop::collection::vec(prop::bool::ANY.prop_map(|b| b as u8 as f64), rows),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn learn_many_is_the_loop_of_learn_one(
        opt in optimizers(),
        logistic in prop::bool::ANY,
        (xs, ys) in data(3),
    ) {
        let loss = if logistic { Loss::Logistic } else { Loss::Squared };
        let mut a = Linear::new(loss, opt, 3).unwrap();
        let mut b = a.clone();
        let pa = a.learn_many(&xs, &ys).unwrap();
        let mut pb = Vec::new();
        for (r, &y) in ys.iter().enumerate() {
            pb.push(b.learn_one(&xs[r * 3..r * 3 + 3], y).unwrap());
        }
        prop_assert!(a == b);
        prop_assert_eq!(
            pa.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            pb.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        // predict_one is the prediction learn_one makes before its update
        let x = &xs[0..3];
        let p = a.predict_one(x).unwrap();
        let q = a.clone().learn_one(x, ys[0]).unwrap();
        prop_assert_eq!(p.to_bits(), q.to_bits());
        // the document holds the exact state, and learning continues identically from it
        let mut c = Linear::from_json(&a.to_json().unwrap()).unwrap();
        prop_assert!(c == a);
        c.learn_many(&xs, &ys).unwrap();
        a.learn_many(&xs, &ys).unwrap();
        prop_assert!(c == a);
    }

    #[test]
    fn a_bad_row_anywhere_leaves_the_model_unchanged(
        (xs, ys) in data(2),
        bad in 0usize..1000,
        what in 0usize..3,
    ) {
        let mut m = Linear::new(Loss::Logistic, Optimizer::Ftrl { alpha: 0.1, beta: 1.0, l1: 0.0, l2: 0.0 }, 2).unwrap();
        m.learn_one(&[0.5, -0.5], 1.0).unwrap();
        let before = m.clone();
        let (mut xs, mut ys) = (xs, ys);
        let r = bad % ys.len();
        match what {
            0 => xs[r * 2] = f64::NAN,
            1 => xs[r * 2 + 1] = f64::INFINITY,
            _ => ys[r] = 0.5,
        }
        prop_assert!(m.learn_many(&xs, &ys).is_err());
        prop_assert!(m == before);
    }
}

fn softmax_data(k: usize, c: i64) -> impl Strategy<Value = (Vec<f64>, Vec<i64>)> {
    (1usize..40).prop_flat_map(move |rows| {
        (
            prop::collection::vec(-3.0f64..3.0, rows * k),
            prop::collection::vec(0..c, rows),
        )
    })
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Softmax: learn_many over any split of the stream is the loop of learn_one, bit for bit;
    /// predict_one is what learn_one scores; the document continues identically.
    #[test]
    fn softmax_learn_many_is_the_loop_of_learn_one_across_splits(
        opt in optimizers(),
        n_classes in 2i64..5,
        (xs, ys) in softmax_data(3, 2),
        cut in 0usize..1000,
    ) {
        let classes: Vec<ClassLabel> = (0..n_classes).map(ClassLabel::Int).collect();
        let ys: Vec<i64> = ys.iter().enumerate().map(|(i, &y)| (y + i as i64) % n_classes).collect();
        let mut a = Softmax::new(classes, opt, 3).unwrap();
        let mut b = a.clone();
        let mut c = a.clone();
        let pa = a.learn_many(&xs, &ys).unwrap();
        let mut pb = Vec::new();
        for (r, &y) in ys.iter().enumerate() {
            let x = &xs[r * 3..r * 3 + 3];
            let p = b.predict_one(x).unwrap();
            let q = b.learn_one(x, y).unwrap();
            prop_assert_eq!(bits(&p), bits(&q));
            pb.extend(q);
        }
        let r = cut % (ys.len() + 1);
        let mut pc = c.learn_many(&xs[..r * 3], &ys[..r]).unwrap();
        let mut c = Softmax::from_json(&c.to_json().unwrap()).unwrap();
        pc.extend(c.learn_many(&xs[r * 3..], &ys[r..]).unwrap());
        prop_assert!(a == b);
        prop_assert!(a == c);
        prop_assert_eq!(bits(&pa), bits(&pb));
        prop_assert_eq!(bits(&pa), bits(&pc));
    }

    #[test]
    fn softmax_a_bad_row_anywhere_leaves_the_model_unchanged(
        (xs, ys) in softmax_data(2, 3),
        bad in 0usize..1000,
        what in 0usize..4,
    ) {
        let classes: Vec<ClassLabel> = (0..3).map(ClassLabel::Int).collect();
        let mut m = Softmax::new(classes, Optimizer::Ftrl { alpha: 0.1, beta: 1.0, l1: 0.0, l2: 0.0 }, 2).unwrap();
        m.learn_one(&[0.5, -0.5], 1).unwrap();
        let before = m.clone();
        let (mut xs, mut ys) = (xs, ys);
        let r = bad % ys.len();
        match what {
            0 => xs[r * 2] = f64::NAN,
            1 => xs[r * 2 + 1] = f64::NEG_INFINITY,
            2 => ys[r] = 3,
            _ => ys[r] = -1,
        }
        prop_assert!(m.learn_many(&xs, &ys).is_err());
        prop_assert!(m == before);
    }
}

/// One served row and its label, with an arrival delay for the label.
#[derive(Clone, Debug)]
struct Case {
    at: i64,
    label_delay: Option<i64>,
    arrival_delay: i64,
    y: bool,
}

fn cases() -> impl Strategy<Value = Vec<Case>> {
    prop::collection::vec(
        (
            0i64..1000,
            prop::option::weighted(0.8, 0i64..150),
            0i64..50,
            prop::bool::ANY,
        )
            .prop_map(|(at, label_delay, arrival_delay, y)| Case {
                at,
                label_delay,
                arrival_delay,
                y,
            }),
        1..60,
    )
}

type Seq = Vec<(RequestId, i64, i64, u64, bool)>;

/// Feed the rows and labels in the order given by their arrival times (`at` for a row,
/// label time + arrival delay for a label; rows first on ties), then flush.
fn run(cases: &[Case], lateness: i64, order_seed: u64) -> Seq {
    let mut j = LabelJoin::new(100, OnTimeout::Label(0.0), 10_000, lateness).unwrap();
    // (arrival, tiebreak, is_label, index)
    let mut arrivals: Vec<(i64, u64, bool, usize)> = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let tb = (i as u64 ^ order_seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        arrivals.push((c.at, tb, false, i));
        if let Some(d) = c.label_delay {
            arrivals.push((c.at + d + c.arrival_delay, tb, true, i));
        }
    }
    arrivals.sort_by_key(|a| (a.0, a.2, a.1));
    for (_, _, is_label, i) in arrivals {
        let c = &cases[i];
        let id = RequestId::Int(i as i64);
        if is_label {
            // a label after the wait may find its row forgotten (an error, counted): ignored
            // here as a stream would; what matters is the sequence of examples
            let _ = j.label(&id, c.at + c.label_delay.unwrap(), c.y as u8 as f64);
        } else {
            j.serve(id, c.at, vec![i as f64]).unwrap();
        }
    }
    j.flush();
    assert_eq!(j.stats().late_labels, 0);
    j.drain()
        .into_iter()
        .map(|e| (e.id, e.at, e.release, e.y.to_bits(), e.timed_out))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn examples_do_not_depend_on_arrival_order_within_lateness(cs in cases(), seed in any::<u64>()) {
        // arrival delays are < 50 = the allowed lateness: nothing is late
        let in_time: Vec<Case> = cs.iter().cloned().map(|mut c| { c.arrival_delay = 0; c }).collect();
        let reference = run(&in_time, 50, 0);
        let shuffled = run(&cs, 50, seed);
        prop_assert_eq!(&shuffled, &reference);
        // sorted by (release time, request id); every row released exactly once; labels as given
        let keys: Vec<_> = reference.iter().map(|e| (e.2, e.0.clone())).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        prop_assert_eq!(keys, sorted);
        prop_assert_eq!(reference.len(), cs.len());
        for (id, at, release, y, timed_out) in &reference {
            let RequestId::Int(i) = id else { unreachable!() };
            let c = &cs[*i as usize];
            prop_assert_eq!(*at, c.at);
            match c.label_delay {
                Some(d) if d <= 100 => {
                    prop_assert!(!timed_out);
                    prop_assert_eq!(*release, c.at + d);
                    prop_assert_eq!(*y, (c.y as u8 as f64).to_bits());
                }
                _ => {
                    prop_assert!(*timed_out);
                    prop_assert_eq!(*release, c.at + 100);
                    prop_assert_eq!(*y, 0.0f64.to_bits());
                }
            }
        }
    }
}

#[test]
fn max_pending_evicts_the_first_release_and_counts_it() {
    let mut j = LabelJoin::new(100, OnTimeout::Drop, 2, 0).unwrap();
    j.serve(RequestId::Int(1), 10, vec![]).unwrap();
    j.serve(RequestId::Str("b".into()), 5, vec![]).unwrap();
    j.serve(RequestId::Int(3), 20, vec![]).unwrap(); // evicts "b" (release 105 first)
    assert_eq!(j.pending(), 2);
    assert_eq!(j.stats().evicted, 1);
    let e = j.label(&RequestId::Str("b".into()), 30, 1.0).unwrap_err();
    assert!(e.to_string().contains("evicted"), "{e}");
    // bad input leaves the join as it was
    assert!(j.label(&RequestId::Int(1), 30, f64::NAN).is_err());
    assert!(j.serve(RequestId::Int(1), 40, vec![]).is_err());
    j.label(&RequestId::Int(1), 30, 1.0).unwrap();
    assert!(j
        .label(&RequestId::Int(1), 31, 0.0)
        .unwrap_err()
        .to_string()
        .contains("already has"));
    j.flush();
    let ex = j.drain();
    assert_eq!(ex.len(), 1); // id 3 timed out and was dropped
    assert_eq!((ex[0].id.clone(), ex[0].release), (RequestId::Int(1), 30));
    let s = j.stats();
    assert_eq!(
        (
            s.timeouts_dropped,
            s.bad_labels,
            s.reused_ids,
            s.duplicate_labels
        ),
        (1, 1, 1, 1)
    );
}

/// A slow, obviously correct label join (linear scans, no heaps, no lazy deletion) for
/// in-order streams with any `max_pending`, id reuse after forgetting, and evictions.
struct RefJoin {
    wait: i64,
    max_pending: usize,
    default: Option<f64>,
    w: Option<i64>,
    /// id -> (at, label, release, x)
    pending: Vec<(i64, i64, Option<f64>, i64)>,
    /// id -> until
    gone: Vec<(i64, i64)>,
    out: Vec<(i64, i64, i64, u64, bool)>,
    evicted: u64,
}

impl RefJoin {
    fn release(&mut self, all: bool) {
        let Some(s) = self.w else { return };
        loop {
            let first = self
                .pending
                .iter()
                .filter(|p| all || p.3 < s)
                .map(|p| (p.3, p.0))
                .min();
            let Some((r, id)) = first else { break };
            let i = self.pending.iter().position(|p| p.0 == id).unwrap();
            let (_, at, label, _) = self.pending.remove(i);
            match (label, self.default) {
                (Some(y), _) => self.out.push((id, at, r, y.to_bits(), false)),
                (None, Some(d)) => self.out.push((id, at, r, d.to_bits(), true)),
                (None, None) => {}
            }
            self.gone.push((id, at + self.wait));
        }
        if !all {
            self.gone.retain(|g| g.1 >= s);
        }
    }
    fn serve(&mut self, id: i64, at: i64) -> &'static str {
        if self.pending.iter().any(|p| p.0 == id) || self.gone.iter().any(|g| g.0 == id) {
            return "reused";
        }
        if self.w.is_some_and(|s| at + self.wait < s) {
            return "late";
        }
        if self.pending.len() >= self.max_pending {
            let (_, victim) = self.pending.iter().map(|p| (p.3, p.0)).min().unwrap();
            let i = self.pending.iter().position(|p| p.0 == victim).unwrap();
            let (_, vat, _, _) = self.pending.remove(i);
            self.gone.push((victim, vat + self.wait));
            self.evicted += 1;
        }
        self.pending.push((id, at, None, at + self.wait));
        "ok"
    }
    fn label(&mut self, id: i64, t: i64, y: f64) -> &'static str {
        if self.w.is_some_and(|s| t < s) {
            return "late";
        }
        let wait = self.wait;
        let outcome = match self.pending.iter_mut().find(|p| p.0 == id) {
            Some(p) if p.2.is_some() => return "duplicate",
            Some(p) if t > p.1 + wait => "after_wait",
            Some(p) => {
                p.2 = Some(y);
                p.3 = t.max(p.1);
                "ok"
            }
            None => return "not_pending",
        };
        self.w = Some(self.w.map_or(t, |w| w.max(t)));
        self.release(false);
        outcome
    }
}

#[derive(Clone, Debug)]
enum Op {
    Serve(i64, i64),
    Label(i64, i64, bool),
    Advance(i64),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    // times move forward in small steps (an in-order stream); ids come from a small set, so
    // they are reused once forgotten, and a small max_pending evicts
    prop::collection::vec((0u8..3, 0i64..8, 0i64..30, prop::bool::ANY), 1..120).prop_map(|v| {
        let mut t = 0;
        v.into_iter()
            .map(|(kind, id, dt, y)| {
                t += dt;
                match kind {
                    0 => Op::Serve(id, t),
                    1 => Op::Label(id, t, y),
                    _ => Op::Advance(t),
                }
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn label_join_equals_a_slow_reference(ops in ops(), max_pending in 1usize..6, drop in prop::bool::ANY) {
        let default = if drop { None } else { Some(0.5) };
        let on_timeout = default.map_or(OnTimeout::Drop, OnTimeout::Label);
        let mut j = LabelJoin::new(50, on_timeout, max_pending, 0).unwrap();
        let mut r = RefJoin { wait: 50, max_pending, default, w: None, pending: vec![],
                              gone: vec![], out: vec![], evicted: 0 };
        for op in &ops {
            match *op {
                Op::Serve(id, at) => {
                    let got = match j.serve(RequestId::Int(id), at, vec![id as f64]) {
                        Ok(Outcome::Accepted) => "ok",
                        Ok(_) => "late",
                        Err(_) => "reused",
                    };
                    prop_assert_eq!(got, r.serve(id, at), "{:?}", op);
                }
                Op::Label(id, t, y) => {
                    let y = y as u8 as f64;
                    let got = match j.label(&RequestId::Int(id), t, y) {
                        Ok(Outcome::Accepted) => "ok",
                        Ok(Outcome::Late) => "late",
                        Ok(Outcome::AfterWait) => "after_wait",
                        Err(e) if e.to_string().contains("already has") => "duplicate",
                        Err(_) => "not_pending",
                    };
                    prop_assert_eq!(got, r.label(id, t, y), "{:?}", op);
                }
                Op::Advance(t) => {
                    j.advance(t);
                    r.w = Some(r.w.map_or(t, |w| w.max(t)));
                    r.release(false);
                }
            }
            prop_assert_eq!(j.pending(), r.pending.len());
        }
        j.flush();
        r.w = Some(i64::MAX);
        r.release(true);
        let got: Vec<_> = j.drain().into_iter().map(|e| {
            let RequestId::Int(i) = e.id else { unreachable!() };
            (i, e.at, e.release, e.y.to_bits(), e.timed_out)
        }).collect();
        prop_assert_eq!(got, r.out);
        prop_assert_eq!(j.stats().evicted, r.evicted);
    }
}

fn apply(j: &mut LabelJoin, op: &Op) {
    match *op {
        Op::Serve(id, at) => {
            let _ = j.serve(RequestId::Int(id), at, vec![id as f64, at as f64]);
        }
        Op::Label(id, t, y) => {
            let _ = j.label(&RequestId::Int(id), t, y as u8 as f64);
        }
        Op::Advance(t) => j.advance(t),
    }
}

fn seq(j: &mut LabelJoin) -> Vec<(RequestId, i64, i64, Vec<u64>, u64, bool)> {
    j.drain()
        .into_iter()
        .map(|e| {
            let x = e.x.iter().map(|v| v.to_bits()).collect();
            (e.id, e.at, e.release, x, e.y.to_bits(), e.timed_out)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn a_restored_join_continues_exactly_like_the_uninterrupted_one(
        ops in ops(), cut in any::<prop::sample::Index>(), max_pending in 1usize..6,
    ) {
        let fresh = || LabelJoin::new(50, OnTimeout::Label(0.5), max_pending, 10).unwrap();
        let (mut a, mut b) = (fresh(), fresh());
        let cut = cut.index(ops.len() + 1);
        let mut got = Vec::new();
        for op in &ops[..cut] {
            apply(&mut b, op);
        }
        got.extend(seq(&mut b)); // drained before the snapshot: part of the sequence
        let bytes = b.to_bytes().unwrap();
        let mut b = LabelJoin::from_bytes(&bytes).unwrap();
        // (bytes are not a fixed point: the maps' iteration order is seeded per map)
        prop_assert_eq!(b.pending(), LabelJoin::from_bytes(&bytes).unwrap().pending());
        for op in &ops[cut..] {
            apply(&mut b, op);
        }
        for op in &ops {
            apply(&mut a, op);
        }
        a.flush();
        b.flush();
        got.extend(seq(&mut b));
        prop_assert_eq!(got, seq(&mut a));
        prop_assert_eq!(a.stats(), b.stats());
    }
}

#[test]
fn a_damaged_join_snapshot_is_refused() {
    let mut j = LabelJoin::new(50, OnTimeout::Drop, 10, 0).unwrap();
    j.serve(RequestId::Str("r1".into()), 5, vec![1.0]).unwrap();
    let good = j.to_bytes().unwrap();
    assert!(LabelJoin::from_bytes(&good).is_ok());
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let mut newer = good.clone();
    newer[4] += 1;
    for (bytes, why) in [
        (&good[..good.len() - 1], "truncated"),
        (&flipped[..], "corrupted"),
        (&newer[..], "upgrade rtml"),
        (&b"RTKS and more bytes than twenty"[..], "not a label join"),
        (&[][..], "not a label join"),
    ] {
        let e = LabelJoin::from_bytes(bytes).unwrap_err().to_string();
        assert!(e.contains(why), "{e}");
    }
}

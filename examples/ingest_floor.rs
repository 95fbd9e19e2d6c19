//! The floor of the exact design's batched ingest, part by part (issue 18): what an event costs
//! before any window logic, measured in instructions under callgrind.
//!
//! ```bash
//! cargo build --release --no-default-features --example ingest_floor
//! for m in gen sort append exact all; do
//!   valgrind --tool=callgrind --callgrind-out-file=floor.$m.cg \
//!     target/release/examples/ingest_floor $m 200000
//! done
//! # instructions of a part per event = (its "Collected" - gen's) / N
//! ```
//!
//! The events are the benchmark workload's shape (`bench/common.py`): N events, N/10 keys, 7
//! days, times shuffled within 5 minutes, a value in cents (not a dyadic fraction: the exact
//! sums take their general path) and a category word. Parts:
//! * `sort`: the batch's arrival order ([`rtml::arrival::order`]);
//! * `append`: each event, in that order, to its key's row buffer (a hash lookup and a push
//!   of its three words);
//! * `exact`: the exact sums of the 18-feature set's two sliding windows (sum and sum of
//!   squares over 1h and 24h), each event folded in once and out once per window: 8 exact
//!   updates ([`rtml::exact::ExactSum::fold_moment`] four times);
//! * `all`: the three.

use std::hint::black_box;

use rtml::exact::ExactSum;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[derive(Default)]
struct Key {
    rows: Vec<u64>,
    /// sum and sum of squares over 1h, over 24h (each seeded with 20 values, as a key's window
    /// holds a few)
    sums: [ExactSum; 4],
    /// the key's last 4 values: the one 4 events back leaves the windows
    recent: [f64; 4],
    seen: usize,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "all".into());
    let n: usize = args.next().map_or(200_000, |s| s.parse().unwrap());
    let sec = 1_000_000_000i64;
    let mut rng = Rng(7);
    let n_keys = (n / 10).max(1) as u64;
    let keys: Vec<u64> = (0..n).map(|_| rng.next() % n_keys).collect();
    // times over 7 days, in arrival order: shuffled within 5 minutes
    let mut ts: Vec<(i64, i64)> = (0..n)
        .map(|_| {
            let t = 1_700_000_000 * sec + (rng.next() % (7 * 86_400)) as i64 * sec;
            (t + (rng.next() % 300) as i64 * sec, t)
        })
        .collect();
    ts.sort_unstable();
    let ts: Vec<i64> = ts.into_iter().map(|(_, t)| t).collect();
    let v: Vec<u64> = (0..n)
        .map(|_| ((rng.next() % 100_000) as f64 / 100.0).to_bits())
        .collect();
    let cat: Vec<u64> = (0..n).map(|_| rng.next() % 50).collect();
    let values = vec![v, cat];
    let (sort, append, exact) = match mode.as_str() {
        "gen" => (false, false, false),
        "sort" => (true, false, false),
        "append" => (false, true, false),
        "exact" => (false, false, true),
        "all" => (true, true, true),
        m => panic!("unknown mode {m}"),
    };
    let order: Vec<u32> = if sort {
        rtml::arrival::order(&ts, &values)
    } else {
        (0..n as u32).collect()
    };
    // every key's state exists before the timed part (in `gen` too)
    let mut state: hashbrown::HashMap<u64, Key> = hashbrown::HashMap::new();
    for k in 0..n_keys {
        let key = state.entry(k).or_default();
        for _ in 0..20 {
            let x = (rng.next() % 100_000) as f64 / 100.0;
            let [s1h, q1h, s24, q24] = &mut key.sums;
            ExactSum::fold_moment(s1h, Some(q1h), x, false);
            ExactSum::fold_moment(s24, Some(q24), x, false);
        }
    }
    let mut spare = Key::default();
    for &i in &order {
        let i = i as usize;
        let key = if append || exact {
            state.get_mut(&keys[i]).unwrap()
        } else {
            &mut spare
        };
        if append {
            key.rows
                .extend_from_slice(&[ts[i] as u64, values[0][i], values[1][i]]);
        }
        if exact {
            let x = f64::from_bits(values[0][i]);
            let [s1h, q1h, s24, q24] = &mut key.sums;
            ExactSum::fold_moment(s1h, Some(q1h), x, false);
            ExactSum::fold_moment(s24, Some(q24), x, false);
            // each value leaves each window once: the key's value of 4 events back, now
            let slot = key.seen % 4;
            if key.seen >= 4 {
                let old = key.recent[slot];
                ExactSum::fold_moment(s1h, Some(q1h), old, true);
                ExactSum::fold_moment(s24, Some(q24), old, true);
            }
            key.recent[slot] = x;
            key.seen += 1;
        }
    }
    black_box(&state);
    black_box(&spare);
    println!("{mode} {n} events, {} keys", state.len());
}

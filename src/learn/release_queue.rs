//! A min-priority queue of (release time, request id) tuned for streams that are nearly in
//! time order: the label join pushes row deadlines (served in nearly increasing `at`) and label
//! release times (labels arrive in nearly increasing `t`). Each of those two *runs* is a FIFO
//! while its keys keep increasing (push and pop O(1)); a key smaller than its run's last one goes
//! to a binary heap instead. The minimum is the least of the three fronts, so the queue pops
//! keys in exactly the order one heap (or an ordered set) would.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use serde::{Deserialize, Serialize};

/// Which in-order run a key belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Run {
    Deadline = 0,
    Label = 1,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(serialize = "K: Serialize", deserialize = "K: Deserialize<'de>"))]
pub struct ReleaseQueue<K: Ord> {
    runs: [VecDeque<K>; 2],
    heap: BinaryHeap<Reverse<K>>,
}

impl<K: Ord> Default for ReleaseQueue<K> {
    fn default() -> Self {
        ReleaseQueue {
            runs: [VecDeque::new(), VecDeque::new()],
            heap: BinaryHeap::new(),
        }
    }
}

impl<K: Ord> ReleaseQueue<K> {
    pub fn push(&mut self, run: Run, key: K) {
        let q = &mut self.runs[run as usize];
        if q.back().is_none_or(|last| *last <= key) {
            q.push_back(key);
        } else {
            self.heap.push(Reverse(key));
        }
    }

    /// Where the smallest key is: 0 / 1 for a run, 2 for the heap.
    fn min_source(&self) -> Option<usize> {
        let mut best: Option<(usize, &K)> = None;
        let fronts = [
            self.runs[0].front(),
            self.runs[1].front(),
            self.heap.peek().map(|r| &r.0),
        ];
        for (i, k) in fronts.into_iter().enumerate() {
            if let Some(k) = k {
                if best.is_none_or(|(_, b)| k < b) {
                    best = Some((i, k));
                }
            }
        }
        best.map(|(i, _)| i)
    }

    pub fn peek(&self) -> Option<&K> {
        match self.min_source()? {
            2 => self.heap.peek().map(|r| &r.0),
            i => self.runs[i].front(),
        }
    }

    pub fn pop(&mut self) -> Option<K> {
        match self.min_source()? {
            2 => self.heap.pop().map(|r| r.0),
            i => self.runs[i].pop_front(),
        }
    }

    /// Pop the smallest key if `take(key)` says so (one search for the minimum, not two).
    #[inline]
    pub fn pop_if(&mut self, take: impl FnOnce(&K) -> bool) -> Option<K> {
        match self.min_source()? {
            2 => {
                if take(&self.heap.peek()?.0) {
                    self.heap.pop().map(|r| r.0)
                } else {
                    None
                }
            }
            i => {
                if take(self.runs[i].front()?) {
                    self.runs[i].pop_front()
                } else {
                    None
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.runs[0].len() + self.runs[1].len() + self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every key, smallest first.
    fn sorted(&self) -> Vec<&K> {
        let mut all: Vec<&K> = self.runs[0]
            .iter()
            .chain(self.runs[1].iter())
            .chain(self.heap.iter().map(|r| &r.0))
            .collect();
        all.sort();
        all
    }
}

/// Serde for a queue as the plain sequence of its keys, smallest first (the bytes of a
/// `BinaryHeap<Reverse<K>>` holding the same keys in some order, so it reads what one wrote).
/// The sequence is canonical: equal queues give equal bytes whatever their history, and
/// reading it back puts every key on one run.
pub mod as_sequence {
    use super::{ReleaseQueue, Run};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Ord + Serialize, S: Serializer>(
        q: &ReleaseQueue<K>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        q.sorted().serialize(s)
    }

    pub fn deserialize<'de, K: Ord + Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<ReleaseQueue<K>, D::Error> {
        let keys = Vec::<K>::deserialize(d)?;
        let mut q = ReleaseQueue::default();
        for k in keys {
            q.push(Run::Deadline, k);
        }
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_the_order_of_one_heap_whatever_the_push_order() {
        // a deterministic pseudo-random mix of in-order and out-of-order pushes on both runs
        let mut q = ReleaseQueue::default();
        let mut all = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut popped = Vec::new();
        for i in 0..5000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let run = if x & 1 == 0 {
                Run::Deadline
            } else {
                Run::Label
            };
            // mostly increasing, sometimes back in time
            let key = (i as i64) * 3 - (x % 50) as i64 * ((x >> 8) % 4 == 0) as i64;
            q.push(run, (key, i));
            all.push((key, i));
            if x % 7 == 0 {
                popped.push(q.pop().unwrap());
            }
        }
        while let Some(k) = q.pop() {
            popped.push(k);
        }
        assert!(q.is_empty());
        // the same pops as a reference: a sorted multiset consumed at the same moments
        let mut reference = std::collections::BTreeSet::new();
        let mut want = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for (i, k) in all.iter().enumerate() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            reference.insert(*k);
            let _ = i;
            if x % 7 == 0 {
                want.push(reference.pop_first().unwrap());
            }
        }
        while let Some(k) = reference.pop_first() {
            want.push(k);
        }
        assert_eq!(popped, want);
    }
}

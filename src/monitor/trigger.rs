//! A threshold trigger with hysteresis: it watches one metric of one column over the monitor's
//! closed windows (in window-end order) and fires once on entering the alert state and once on
//! leaving it.
//!
//! * A window **breaches** when its value is `> above`; it **clears** when its value is
//!   `<= below` (`below` defaults to `above`; a lower `below` is a hysteresis band).
//! * With `low` (metrics where low is bad: p-values) the band is read the other way: a window
//!   breaches when its value is `< below` and clears when it is `>= above`.
//! * Entering: the trigger fires `Enter` at the window ending at `t` when every evaluated
//!   window from the first breaching one of the current run (ending at `t0`) to `t` breached
//!   and `t - t0 >= for_` (`for_ = 0`: the first breaching window fires), unless the previous
//!   `Enter` was less than `cooldown` before (the window then counts as `suppressed`; the run
//!   goes on and fires once the cooldown has passed).
//! * Leaving: symmetric, with clearing windows and the same `for_`; no cooldown.
//! * A window whose metric is null (no rows, no non-null value, a metric the column does not
//!   have) or that has fewer than `min_samples` non-null values is **not evaluated**: it
//!   neither breaks nor extends a run, and is counted in `skipped`. A null never reaches the
//!   comparison.

use serde::{Deserialize, Serialize};

use super::metrics::Metric;
use crate::error::{Error, Result};

/// What a trigger watches and when it fires.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TriggerSpec {
    pub metric: Metric,
    /// Index of the reference column.
    pub column: usize,
    pub above: f64,
    pub below: f64,
    /// ns
    pub for_: i64,
    /// ns
    pub cooldown: i64,
    pub min_samples: u64,
    /// Low is bad: breach when `value < below`, clear when `value >= above`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub low: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl TriggerSpec {
    pub fn check(&self) -> Result<()> {
        if !self.above.is_finite() {
            return Err(Error::spec("above", "must be a finite number"));
        }
        if !self.below.is_finite() || self.below > self.above {
            return Err(Error::spec(
                "below",
                format!("must be a finite number <= above ({})", self.above),
            ));
        }
        if self.for_ < 0 || self.cooldown < 0 {
            return Err(Error::spec("for_", "for_ and cooldown must be >= 0"));
        }
        Ok(())
    }
}

/// Entering or leaving the alert state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transition {
    Enter,
    Leave,
}

/// Counters of one trigger.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerCounters {
    pub evaluated: u64,
    pub skipped: u64,
    pub entered: u64,
    pub left: u64,
    pub suppressed: u64,
}

/// A trigger's state machine.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Trigger {
    pub spec: TriggerSpec,
    pub alerting: bool,
    run_since: Option<i64>,
    last_enter: Option<i64>,
    pub counters: TriggerCounters,
}

impl Trigger {
    pub fn new(spec: TriggerSpec) -> Result<Trigger> {
        spec.check()?;
        Ok(Trigger {
            spec,
            alerting: false,
            run_since: None,
            last_enter: None,
            counters: TriggerCounters::default(),
        })
    }

    /// Observe the closed window ending at `end` with the metric `value` over `samples`
    /// non-null values.
    pub fn observe(&mut self, end: i64, value: Option<f64>, samples: u64) -> Option<Transition> {
        let Some(v) = value.filter(|v| !v.is_nan()) else {
            self.counters.skipped += 1;
            return None;
        };
        if samples < self.spec.min_samples {
            self.counters.skipped += 1;
            return None;
        }
        self.counters.evaluated += 1;
        let toward = match (self.alerting, self.spec.low) {
            (false, false) => v > self.spec.above,
            (true, false) => v <= self.spec.below,
            (false, true) => v < self.spec.below,
            (true, true) => v >= self.spec.above,
        };
        if !toward {
            self.run_since = None;
            return None;
        }
        let since = *self.run_since.get_or_insert(end);
        if end.saturating_sub(since) < self.spec.for_ {
            return None;
        }
        if self.alerting {
            self.alerting = false;
            self.run_since = None;
            self.counters.left += 1;
            return Some(Transition::Leave);
        }
        if self
            .last_enter
            .is_some_and(|l| end.saturating_sub(l) < self.spec.cooldown)
        {
            self.counters.suppressed += 1;
            return None;
        }
        self.alerting = true;
        self.run_since = None;
        self.last_enter = Some(end);
        self.counters.entered += 1;
        Some(Transition::Enter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(for_: i64, cooldown: i64) -> TriggerSpec {
        TriggerSpec {
            metric: Metric::Psi,
            column: 0,
            above: 0.2,
            below: 0.1,
            for_,
            cooldown,
            min_samples: 10,
            low: false,
        }
    }

    #[test]
    fn hysteresis_for_and_cooldown() {
        let mut t = Trigger::new(spec(20, 100)).unwrap();
        assert_eq!(t.observe(10, Some(0.3), 50), None); // run starts
        assert_eq!(t.observe(20, None, 50), None); // skipped
        assert_eq!(t.observe(25, Some(0.9), 5), None); // too few samples
        assert_eq!(t.observe(30, Some(0.3), 50), Some(Transition::Enter));
        assert_eq!(t.observe(40, Some(0.15), 50), None); // inside the band: stays
        assert_eq!(t.observe(50, Some(0.05), 50), None);
        assert_eq!(t.observe(70, Some(0.05), 50), Some(Transition::Leave));
        // breaching again within the cooldown of the enter at 30
        assert_eq!(t.observe(80, Some(0.5), 50), None);
        assert_eq!(t.observe(100, Some(0.5), 50), None); // suppressed
        assert_eq!(t.observe(130, Some(0.5), 50), Some(Transition::Enter));
        assert_eq!(
            t.counters,
            TriggerCounters {
                evaluated: 8,
                skipped: 2,
                entered: 2,
                left: 1,
                suppressed: 1
            }
        );
    }

    #[test]
    fn low_is_bad_mirrors_the_band() {
        // p-value trigger: enter under 0.01, leave at 0.05 or more
        let mut t = Trigger::new(TriggerSpec {
            metric: Metric::KsPvalue,
            column: 0,
            above: 0.05,
            below: 0.01,
            for_: 0,
            cooldown: 0,
            min_samples: 1,
            low: true,
        })
        .unwrap();
        assert_eq!(t.observe(10, Some(0.5), 50), None);
        assert_eq!(t.observe(20, None, 0), None); // empty window: skipped, never 0
        assert_eq!(t.observe(30, Some(0.01), 50), None); // not < 0.01
        assert_eq!(t.observe(40, Some(0.001), 50), Some(Transition::Enter));
        assert_eq!(t.observe(50, Some(0.03), 50), None); // inside the band
        assert_eq!(t.observe(60, Some(0.05), 50), Some(Transition::Leave));
        assert_eq!(t.counters.skipped, 1);
    }
}

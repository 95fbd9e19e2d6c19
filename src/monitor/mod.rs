//! Drift monitoring (issue 16), plain Rust: a training table's distribution is summarised once
//! as a [`Reference`] (binned counts), and live or historical rows are compared with it, one
//! implementation for both paths:
//!
//! * [`reference`]: the reference document (quantile bins of numeric columns, frequencies of
//!   categorical ones), fitted from Arrow columns, versioned JSON;
//! * [`counts`]: a row's value as a bin code, and the O(bins) counts of one column over a set
//!   of rows (what every window and every report period holds);
//! * [`metrics`]: PSI, Jensen-Shannon distance, Wasserstein-1, Kolmogorov-Smirnov, chi-square
//!   and the null / out-of-range / unseen rates, from two count vectors;
//! * [`stats`]: the two distribution tails the p-values need (Kolmogorov, chi-square);
//! * [`read`]: Arrow batches -> bin codes per reference column (every input check);
//! * [`report`]: the batch report (every metric per column per period);
//! * [`window`]: the online monitor over event-time windows `[t - W, t)` with allowed lateness;
//! * [`trigger`]: threshold triggers with hysteresis, cooldown and minimum samples.
//!
//! Nothing here knows Python; `src/python/monitor.rs` is the skin. See `docs/monitoring.md`.

pub mod counts;
pub mod metrics;
pub mod read;
pub mod reference;
pub mod report;
pub mod stats;
pub mod trigger;
pub mod window;

pub use counts::Counts;
pub use metrics::{Metric, Metrics};
pub use reference::{ColumnRef, PredictionRef, Reference, PREDICTION, REFERENCE_VERSION};
pub use report::{report, ReportRow};
pub use trigger::{Transition, Trigger, TriggerSpec};
pub use window::{Fired, Monitor};

//! Real-time learning (issue 15), plain Rust:
//!
//! * [`linear`]: online logistic and linear regression trained with FTRL-Proximal or plain SGD,
//!   deterministic (`learn_many` is the loop of `learn_one`, bit for bit), with a versioned JSON
//!   document of the model state;
//! * [`optimizer`]: FTRL-Proximal and SGD, the coefficients and update steps both learners share;
//! * [`softmax`]: online multiclass logistic (softmax) regression with the same optimizers and
//!   the same determinism;
//! * [`label_join`]: served rows wait for their (late) labels by event time and are released as
//!   training examples in (release time, request id) order;
//! * [`release_queue`]: the join's min-queue for nearly-in-order streams;
//! * [`metrics`]: progressive validation (test-then-train) metrics by event time.
//!
//! Nothing here knows Python; `src/python/learn.rs` is the skin. See `docs/learning.md`.

mod frame;
pub mod label_join;
pub mod linear;
pub mod metrics;
pub mod optimizer;
pub mod release_queue;
mod rows;
pub mod softmax;

pub use label_join::{Example, LabelJoin, LabelOutcome, OnTimeout, RequestId};
pub use linear::{Linear, Loss};
pub use metrics::{Progressive, ProgressiveMulticlass};
pub use optimizer::{Optimizer, Schedule};
pub use softmax::{ClassLabel, Softmax};

//! # rtml: real-time ML features
//!
//! Define window features once; compute them with one engine in two places:
//! * [`offline::backfill`]: historical events x a spine of (entity, time) rows -> a
//!   point-in-time-correct training table;
//! * [`online::Engine`]: a live event stream -> the same features at request time, bit for bit.
//!
//! The engine is plain Rust. The Python bindings live in `src/python` behind the `python`
//! feature; `cargo test --no-default-features` builds and tests the engine without Python.
//! Semantics: `docs/semantics.md`.

pub mod agg;
pub mod arrival;
pub mod decode;
pub mod doc_version;
pub mod error;
pub mod exact;
pub mod input;
pub mod key;
pub mod learn;
pub mod monitor;
pub mod offline;
pub mod online;
pub mod plan;
pub mod pool;
pub mod resp;
pub mod spec;
pub mod state;
pub mod text;
pub mod time;
pub mod transform;
pub mod wal;

#[cfg(feature = "python")]
mod python;

pub use error::{Error, Result};
pub use offline::{backfill, FeatureColumn};
pub use online::{snapshot, Engine};
pub use plan::Plan;
pub use spec::Spec;

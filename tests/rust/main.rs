//! The one Rust integration-test binary (builds once). Modules per area.
mod engine;
mod exact;
mod fuzz_regressions;
mod learn;
mod monitor;
mod strings;
mod transforms;
mod wal;

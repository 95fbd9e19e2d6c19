//! The one Rust integration-test binary (builds once). Modules per area.
mod engine;
mod transforms;
mod fuzz_regressions;

//! The fuzz harness as a library for the libFuzzer targets. The same file is compiled into the
//! Rust test binary (`tests/rust/fuzz_regressions.rs`) to replay the committed corpora.
pub mod harness;

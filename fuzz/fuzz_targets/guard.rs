#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| rtml_fuzz::harness::guard(data));

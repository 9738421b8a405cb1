#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| aura_fuzz::shell_parsers(data));

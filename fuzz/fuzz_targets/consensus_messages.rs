#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| aura_fuzz::consensus_messages(data));

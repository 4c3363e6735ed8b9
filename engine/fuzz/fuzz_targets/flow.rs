#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = beamflow_fuzz::flow(data);
});

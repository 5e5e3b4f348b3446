//! libFuzzer target `snapshot`: see cs_fuzz_targets::fuzz_snapshot and docs/fuzzing.md.
#![no_main]

use libfuzzer_sys::fuzz_target;

// Counts heap per thread so that the allocation bounds are checked.
#[global_allocator]
static ALLOC: cs_fuzz_targets::CountingAlloc = cs_fuzz_targets::CountingAlloc;

fuzz_target!(|data: &[u8]| {
    cs_fuzz_targets::fuzz_snapshot(data);
});

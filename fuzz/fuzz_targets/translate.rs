//! Fuzz target: `switch_core::stitch::translate` on arbitrary frames behind
//! an arbitrary translation (input layout: `switch_core::stitch::fuzz::decode_input`).
//!
//! The harness, `switch_core::stitch::fuzz_translate`, panics when a promise
//! of the translation breaks: a refused frame was modified, a checksum that
//! verified no longer does, or translating back with the inverse does not
//! give the original bytes.
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    switch_core::stitch::fuzz_translate(data);
});

/// Without libFuzzer: replays each file named on the command line (a corpus
/// entry or a crash artifact) through the harness.
#[cfg(not(fuzzing))]
fn main() -> std::io::Result<()> {
    let mut n = 0usize;
    for path in std::env::args_os().skip(1) {
        let data = std::fs::read(&path)?;
        switch_core::stitch::fuzz_translate(&data);
        n += 1;
    }
    println!("translate: {n} input(s) replayed, all promises held");
    Ok(())
}

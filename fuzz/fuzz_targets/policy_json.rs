//! `Policy::from_json` on arbitrary text; see `common.rs`.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The loaders take text; a file that is not UTF-8 is refused by
    // `Policy::from_path` before any loader sees it.
    if let Ok(text) = std::str::from_utf8(data) {
        common::check(common::Format::Json, text);
    }
});

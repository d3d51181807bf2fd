//! The fingerprints in the generated file's header: FNV-1a (64 bits) of a
//! text with its line endings made `\n`, so that a checkout with CRLF
//! endings reads the same. Shared with brownout's `tests/proto_codegen.rs`.

/// FNV-1a of `text`, line endings normalised, as 16 hex digits.
pub fn fingerprint(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes().filter(|&b| b != b'\r') {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The generated file: a header naming both fingerprints, then `code`.
pub fn with_header(proto: &str, code: &str) -> String {
    format!(
        "// @generated from proto/booking.proto by tools/proto-gen; do not edit:\n\
         //     cargo run --manifest-path tools/proto-gen/Cargo.toml\n\
         // proto: {}, code: {}\n\n{code}",
        fingerprint(proto),
        fingerprint(code),
    )
}

/// The header's fingerprints, then the code after it; `None` if the header
/// is not there.
pub fn split_header(generated: &str) -> Option<(&str, &str, &str)> {
    let mut lines = generated.splitn(5, '\n');
    let (_, _, fingerprints, blank) = (lines.next()?, lines.next()?, lines.next()?, lines.next()?);
    let code = lines.next()?;
    let (proto, code_fp) = fingerprints
        .trim_end_matches('\r')
        .strip_prefix("// proto: ")?
        .split_once(", code: ")?;
    blank
        .trim_end_matches('\r')
        .is_empty()
        .then_some((proto, code_fp, code))
}

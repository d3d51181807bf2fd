//! `examples/grpc/generated/booking.v1.rs` is what tools/proto-gen makes
//! of `proto/booking.proto` today: its header records a fingerprint of the
//! `.proto` it was made from and one of the code under it, and both must
//! still match.
//!
//! Why a checked-in file and a fingerprint rather than a build script or a
//! test that regenerates: protox and tonic-prost-build bring about 100
//! crates (added as dev-dependencies here, over 2 minutes of CPU, and again
//! for each profile and target dir: the loom and release builds too) to
//! every build that has them. As dev-dependencies every `cargo run --example` and every CI
//! run would pay that; behind a feature, `--all-features` (CI's clippy,
//! doc and test runs) still would. Checked in, the example builds on a
//! fresh machine with only cargo, and only whoever edits the `.proto` runs
//! the generator (`cargo run --manifest-path tools/proto-gen/Cargo.toml`).

#[path = "../tools/proto-gen/src/fingerprint.rs"]
mod fingerprint;

const PROTO: &str = include_str!("../proto/booking.proto");
const GENERATED: &str = include_str!("../examples/grpc/generated/booking.v1.rs");
const REGENERATE: &str = "run `cargo run --manifest-path tools/proto-gen/Cargo.toml` \
                          and commit examples/grpc/generated/booking.v1.rs";

#[test]
fn the_generated_code_is_that_of_the_proto_file_today() {
    let (proto, code_fingerprint, code) = fingerprint::split_header(GENERATED)
        .unwrap_or_else(|| panic!("booking.v1.rs has no fingerprint header: {REGENERATE}"));
    assert_eq!(
        proto,
        fingerprint::fingerprint(PROTO),
        "proto/booking.proto changed since booking.v1.rs was generated: {REGENERATE}"
    );
    assert_eq!(
        code_fingerprint,
        fingerprint::fingerprint(code),
        "booking.v1.rs was edited by hand: change proto/booking.proto instead, then {REGENERATE}"
    );
}

#[test]
fn a_changed_proto_or_hand_edit_changes_the_fingerprint() {
    // The check above can fail: one byte more, a byte changed, or CRLF
    // line endings only (a Windows checkout) tell apart as they should.
    let edited = PROTO.replacen("uint64 id = 1;", "uint32 id = 1;", 1);
    assert_ne!(edited, PROTO, "the edit applies");
    assert_ne!(
        fingerprint::fingerprint(&edited),
        fingerprint::fingerprint(PROTO)
    );
    assert_ne!(
        fingerprint::fingerprint(&format!("{PROTO} ")),
        fingerprint::fingerprint(PROTO)
    );
    assert_eq!(
        fingerprint::fingerprint(&PROTO.replace('\n', "\r\n")),
        fingerprint::fingerprint(PROTO)
    );
    let (_, _, code) = fingerprint::split_header(GENERATED).expect("a header");
    let regenerated = fingerprint::with_header(PROTO, code);
    assert_eq!(
        regenerated,
        GENERATED.replace('\r', ""),
        "the header is the generator's"
    );
}

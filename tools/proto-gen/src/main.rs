//! Generates the booking service's messages, server and client from
//! `proto/booking.proto` into `examples/grpc/generated/booking.v1.rs`:
//!
//! ```text
//! cargo run --manifest-path tools/proto-gen/Cargo.toml
//! ```
//!
//! protox compiles the `.proto` (no protoc), tonic-prost-build writes the
//! Rust, and a header records the fingerprints that brownout's
//! `tests/proto_codegen.rs` checks.

mod fingerprint;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    match generate() {
        Ok(path) => {
            println!("wrote {}", path.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("proto-gen: {err}");
            ExitCode::FAILURE
        }
    }
}

fn generate() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let proto_dir = root.join("proto");
    let proto_file = proto_dir.join("booking.proto");
    let proto = std::fs::read_to_string(&proto_file)
        .map_err(|err| format!("cannot read {}: {err}", proto_file.display()))?;

    let fds = protox::compile(["booking.proto"], [&proto_dir]).map_err(|err| format!("{err:?}"))?;
    let out = std::env::temp_dir().join(format!("brownout-proto-gen-{}", std::process::id()));
    std::fs::create_dir_all(&out)
        .map_err(|err| format!("cannot create {}: {err}", out.display()))?;
    let built = tonic_prost_build::configure()
        .out_dir(&out)
        .emit_rerun_if_changed(false)
        .compile_fds(fds);
    let code = built.and_then(|()| std::fs::read_to_string(out.join("booking.v1.rs")));
    let _ = std::fs::remove_dir_all(&out);
    let code = code.map_err(|err| format!("tonic-prost-build: {err}"))?;

    let target = root.join("examples/grpc/generated/booking.v1.rs");
    let generated = fingerprint::with_header(&proto, &code);
    // What tests/proto_codegen.rs reads back.
    assert_eq!(
        fingerprint::split_header(&generated),
        Some((
            fingerprint::fingerprint(&proto).as_str(),
            fingerprint::fingerprint(&code).as_str(),
            code.as_str()
        ))
    );
    std::fs::write(&target, generated)
        .map_err(|err| format!("cannot write {}: {err}", target.display()))?;
    Ok(target.canonicalize().unwrap_or(target))
}

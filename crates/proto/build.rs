//! Compiles `proto/` with protox (pure Rust), so a fresh machine needs no system `protoc`.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "wxmp/common/v1/errors.proto",
    "wxmp/auth/v1/auth.proto",
    "wxmp/user/v1/user.proto",
    "wxmp/pay/v1/pay.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    // compile_fds prints no rerun-if-changed lines of its own.
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("wxmp_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}

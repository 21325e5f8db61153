//! Generates the tonic/prost code with the vendored `protoc`, so no system install is needed.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut cfg = tonic_prost_build::Config::new();
    cfg.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let files = [
        "proto/switchyard/v1/model.proto",
        "proto/switchyard/v1/admin.proto",
        "proto/switchyard/v1/query.proto",
        "proto/switchyard/v1/discovery.proto",
        "proto/switchyard/v1/access.proto",
        "proto/switchyard/v1/raft.proto",
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("switchyard_descriptor.bin"))
        .compile_with_config(cfg, &files, &["proto"])?;
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    Ok(())
}

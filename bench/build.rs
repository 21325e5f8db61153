//! Generates the etcd client stubs with the vendored `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = tonic_prost_build::Config::new();
    cfg.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().build_server(false).compile_with_config(cfg, &["proto/etcd.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/etcd.proto");
    Ok(())
}

//! Builds the eBPF programs (ebpf/) with the nightly toolchain and embeds the
//! object in the agent, so one binary carries both sides; and generates the
//! SPIFFE Workload API's gRPC code from proto/workload.proto with protoc.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const EBPF_TARGET: &str = "bpfel-unknown-none";
/// Set to a prebuilt object to skip the nested build.
const OBJECT_OVERRIDE: &str = "GRIDWARD_EBPF_OBJECT";

fn main() {
    let cargo_var = |name| env::var_os(name).unwrap_or_else(|| panic!("cargo did not set {name}"));
    let manifest_dir = PathBuf::from(cargo_var("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(cargo_var("OUT_DIR"));
    let Some(root) = manifest_dir.parent() else { panic!("agent/ must live in the workspace") };
    for watched in ["ebpf/src", "ebpf/Cargo.toml", "ebpf/.cargo", "common/src"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed={OBJECT_OVERRIDE}");
    workload_api_proto(&manifest_dir);

    let object = match env::var_os(OBJECT_OVERRIDE) {
        Some(path) => PathBuf::from(path),
        None => build_ebpf(&root.join("ebpf"), &out_dir.join("ebpf-target")),
    };
    let embedded = out_dir.join("gridward.bpf.o");
    if let Err(error) = std::fs::copy(&object, &embedded) {
        panic!("cannot copy the eBPF object {}: {error}", object.display());
    }
}

/// Generates the Workload API's messages, server and client (the client is
/// what the tests call it with). protoc comes from Debian's
/// `protobuf-compiler`, which `cargo xtask setup` installs.
fn workload_api_proto(manifest_dir: &Path) {
    let proto_dir = manifest_dir.join("proto");
    let proto = proto_dir.join("workload.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    println!("cargo:rerun-if-env-changed=PROTOC");
    let generated = tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The client is generic over its transport; tests bring their own.
        .build_transport(false)
        .compile_protos(&[proto], &[proto_dir]);
    if let Err(error) = generated {
        panic!(
            "generating the Workload API code failed: {error}; `cargo xtask setup` installs \
             protoc (Debian's protobuf-compiler) and the well-known types (libprotobuf-dev)"
        );
    }
}

fn build_ebpf(ebpf_dir: &Path, target_dir: &Path) -> PathBuf {
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(ebpf_dir)
        .args(["+nightly", "build", "--release", "-Z", "build-std=core", "--target"])
        .arg(EBPF_TARGET)
        .arg("--target-dir")
        .arg(target_dir);
    // The outer build's compiler settings are for the host, not for BPF.
    for inherited in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cargo.env_remove(inherited);
    }
    let status = cargo.status();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => panic!(
            "building the eBPF programs failed ({status}); `cargo xtask setup` installs the \
             nightly rust-src component and bpf-linker they need"
        ),
        Err(error) => panic!("cannot run cargo for the eBPF programs: {error}"),
    }
    target_dir.join(EBPF_TARGET).join("release").join("gridward")
}

//! Compiles `proto/` with protox (no system protoc) and generates the prost messages and tonic
//! clients and servers, plus the encoded descriptor set for gRPC server reflection.

use std::env;
use std::error::Error;
use std::fs;
use std::path::PathBuf;

/// The .proto files, relative to the proto root.
const PROTOS: &[&str] = &[
    "kms/v1/types.proto",
    "kms/v1/kms_instance_service.proto",
    "kms/v1/key_management_service.proto",
    "kms/v1/crypto_service.proto",
    "kms/v1/audit_service.proto",
    "kms/v1/admin_service.proto",
    "kms/v1/access_key_service.proto",
    "kms/internal/v1/key_material.proto",
    "kms/internal/v1/key_directory.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    println!("cargo:rerun-if-changed={}", proto_root.display());
    for proto in PROTOS {
        println!(
            "cargo:rerun-if-changed={}",
            proto_root.join(proto).display()
        );
    }

    // Imports (google/protobuf/*) are included so reflection clients can resolve every type.
    let mut compiler = protox::Compiler::new([&proto_root])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(PROTOS)?;
    fs::write(
        out_dir.join("kms_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}

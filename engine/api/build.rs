//! Compiles kuzet's .proto files with protox (pure Rust: a fresh machine
//! needs no system `protoc`) and generates the gRPC code with tonic. The
//! encoded descriptor set is kept for server reflection.

#![forbid(unsafe_code)]

use protox::prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = [
        "proto/kuzet/investigation/v1/investigation.proto",
        "proto/kuzet/register/v1/register.proto",
        "proto/kuzet/lists/v1/lists.proto",
        "proto/kuzet/rules/v1/rules.proto",
        "proto/kuzet/cases/v1/cases.proto",
        "proto/kuzet/cluster/v1/cluster.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("kuzet_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}

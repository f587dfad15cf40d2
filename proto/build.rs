//! Compiles the .proto files with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "shoal/v1/types.proto",
        "shoal/v1/control.proto",
        "shoal/v1/dispatcher.proto",
        "shoal/v1/agent.proto",
        "shoal/v1/raft.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    // Task specs as `Bytes`: the manager hands every session the same bytes it built once.
    // Buffers that start small (see src/codec.rs): a manager holds one stream per node.
    tonic_prost_build::configure()
        .bytes(".shoal.v1.Assignment.spec")
        .codec_path("crate::codec::LeanCodec")
        .compile_fds(descriptors)?;
    Ok(())
}

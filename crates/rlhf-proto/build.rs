//! Compiles proto/rlhf/v1/*.proto with protox (pure Rust, no system protoc) and tonic-prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "common",
        "rollout",
        "reward",
        "learner",
        "coordinator",
        "admin",
    ]
    .map(|f| root.join(format!("rlhf/v1/{f}.proto")));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    tonic_prost_build::configure()
        .bytes(".rlhf.v1.WeightChunk.data")
        .compile_fds(fds)?;
    Ok(())
}

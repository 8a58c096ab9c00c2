//! Compiles `proto/*.proto` with protox (pure Rust), so no system `protoc` is needed.
fn main() {
    let files = [
        "proto/scheduler.proto",
        "proto/daemon.proto",
        "proto/manager.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"]).expect("proto files compile");
    tonic_prost_build::configure()
        .compile_fds(fds)
        .expect("generate tonic code");
}

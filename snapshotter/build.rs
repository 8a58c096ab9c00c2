//! Compiles containerd's snapshots API (vendored in `proto/`) with protox, so no system `protoc`
//! is needed. The client is for this crate's tests; containerd's suite uses its own Go client.
fn main() {
    let files = [
        "proto/services/snapshots/v1/snapshots.proto",
        "proto/types/mount.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"]).expect("proto files compile");
    tonic_prost_build::configure()
        .compile_fds(fds)
        .expect("generate tonic code");
}

//! The release binary carries no lab code: without the `demo` feature there is
//! no `damselfly demo` subcommand (and the e2e crate is not linked).

use std::process::Command;

#[test]
#[cfg(not(feature = "demo"))]
fn demo_is_absent_without_the_feature() {
    let out = Command::new(env!("CARGO_BIN_EXE_damselfly"))
        .arg("demo")
        .arg("--help")
        .output()
        .expect("run damselfly");
    assert!(
        !out.status.success(),
        "`damselfly demo` exists without the feature"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unrecognized subcommand 'demo'"), "{err}");
    let help = Command::new(env!("CARGO_BIN_EXE_damselfly"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    assert!(!String::from_utf8_lossy(&help.stdout).contains("demo"));
}

#[test]
#[cfg(feature = "demo")]
fn demo_is_present_with_the_feature() {
    let out = Command::new(env!("CARGO_BIN_EXE_damselfly"))
        .args(["demo", "--help"])
        .output()
        .expect("run damselfly");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

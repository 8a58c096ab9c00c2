//! Locating the binaries that labs run.
//!
//! Order: an environment variable naming the file, then the directory of the
//! running executable (a bench binary sits next to the others; a test binary
//! sits in `deps/` one level below them), then `$CARGO_TARGET_DIR/debug`,
//! then the workspace's `target/debug`.

use std::path::PathBuf;

use anyhow::{Result, bail};

/// Environment variable naming the `damselfly` binary.
pub const DAMSELFLY_BIN_ENV: &str = "DAMSELFLY_BIN";
/// Environment variable naming the `damselfly-origin` binary.
pub const ORIGIN_BIN_ENV: &str = "DAMSELFLY_ORIGIN_BIN";

/// The `damselfly` binary (build it with `cargo build -p damselfly-cli`).
pub fn damselfly() -> Result<PathBuf> {
    locate("damselfly", DAMSELFLY_BIN_ENV)
}

/// The `damselfly-origin` binary of this crate.
pub fn origin() -> Result<PathBuf> {
    locate("damselfly-origin", ORIGIN_BIN_ENV)
}

/// Finds `name` as described in the module docs.
pub fn locate(name: &str, env: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("{env}={} is not a file", path.display());
        }
        return Ok(path);
    }
    let candidates = candidates(name);
    match candidates.iter().find(|p| p.is_file()) {
        Some(found) => Ok(found.clone()),
        None => bail!(
            "{name} not found (set {env}, or build it; looked in {})",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn candidates(name: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(PathBuf::from))
    {
        if exe_dir.ends_with("deps") {
            dirs.extend(exe_dir.parent().map(PathBuf::from));
        }
        dirs.push(exe_dir);
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        dirs.push(PathBuf::from(target).join("debug"));
    }
    dirs.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
    dirs.into_iter().map(|d| d.join(name)).collect()
}

//! Test data: random files and their digests.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Writes `size` random bytes to `path` (from /dev/urandom, so even a GiB
/// takes a few seconds in a debug build).
pub fn write_random_file(path: &Path, size: u64) -> Result<()> {
    let mut random = File::open("/dev/urandom")
        .context("open /dev/urandom")?
        .take(size);
    let mut out = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let written = io::copy(&mut random, &mut out).with_context(|| format!("write {}", path.display()))?;
    if written != size {
        bail!("wrote {written} of {size} bytes to {}", path.display());
    }
    Ok(())
}

/// The hex SHA-256 of a file (`sha256sum`, which is fast even when this
/// crate is built without optimisations).
pub fn sha256_file(path: &Path) -> Result<String> {
    let output = Command::new("sha256sum")
        .arg(path)
        .output()
        .context("run sha256sum")?;
    if !output.status.success() {
        bail!(
            "sha256sum {}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    match text.split_whitespace().next() {
        Some(hex) if hex.len() == 64 => Ok(hex.to_string()),
        _ => bail!("sha256sum {}: unexpected output {text:?}", path.display()),
    }
}

/// Bytes available to unprivileged writers on the file system holding `dir`
/// (`df`, so no unsafe statvfs call is needed here).
pub fn available_bytes(dir: &Path) -> Result<u64> {
    let output = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .context("run df")?;
    let text = String::from_utf8_lossy(&output.stdout);
    match text.lines().nth(1).map(str::trim).map(str::parse) {
        Some(Ok(bytes)) if output.status.success() => Ok(bytes),
        _ => bail!("df {}: unexpected output {text:?}", dir.display()),
    }
}

/// Fails early, with a clear message, unless `dir` has room for `needed` bytes.
pub fn ensure_space(dir: &Path, needed: u64, what: &str) -> Result<()> {
    let available = available_bytes(dir)?;
    if available < needed {
        bail!(
            "{what} needs about {} MiB free in {}, only {} MiB are (set DAMSELFLY_LAB_DIR to put labs elsewhere)",
            needed >> 20,
            dir.display(),
            available >> 20
        );
    }
    Ok(())
}

//! Reads a live process's memory to check that a secret is not in it: every
//! writable private mapping of `/proc/PID/maps` (heap, anonymous memory,
//! stacks, data), read through `/proc/PID/mem` (root, or ptrace rights).
//! Pages that cannot be read (guard pages, vanished mappings) are skipped;
//! a scan that read nothing is an error, not a pass.

use anyhow::{Context, Result, ensure};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Readable bytes of `pid`'s writable memory that were scanned, and how many
/// times `needle` was found in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    pub bytes: u64,
    pub hits: usize,
}

/// Scans `pid`'s writable mappings for `needle`.
pub fn scan(pid: u32, needle: &[u8]) -> Result<Scan> {
    ensure!(!needle.is_empty(), "an empty needle matches anything");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("read /proc/{pid}/maps"))?;
    let mem = File::open(format!("/proc/{pid}/mem")).with_context(|| format!("open /proc/{pid}/mem"))?;
    let mut scan = Scan { bytes: 0, hits: 0 };
    const CHUNK: u64 = 4 << 20;
    let mut buf = vec![0u8; CHUNK as usize + needle.len()];
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with("rw") {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (start, end) = (u64::from_str_radix(start, 16)?, u64::from_str_radix(end, 16)?);
        let mut at = start;
        while at < end {
            // Overlap chunks by the needle's length so a match across a boundary counts.
            let len = (end - at).min(CHUNK + needle.len() as u64) as usize;
            match mem.read_at(&mut buf[..len], at) {
                Ok(n) if n > 0 => {
                    scan.bytes += n as u64;
                    let windows = buf[..n].windows(needle.len()).take(CHUNK as usize);
                    scan.hits += windows.filter(|w| *w == needle).count();
                }
                _ => {}
            }
            at += CHUNK;
        }
    }
    ensure!(scan.bytes > 0, "nothing of process {pid}'s memory could be read");
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_secret_in_its_own_memory() {
        let secret: Vec<u8> = b"memscan-needle-".iter().chain(b"4711").copied().collect();
        let found = scan(std::process::id(), &secret).unwrap();
        assert!(found.hits >= 1, "{found:?}");
        assert!(scan(std::process::id(), b"").is_err());
        drop(secret);
    }
}

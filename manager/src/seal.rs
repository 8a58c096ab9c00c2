//! Secrets the manager has to keep for a while: the registry password of a
//! preheat job and the credential headers of its tasks. They are sealed at
//! rest with XChaCha20-Poly1305 (a random 192-bit nonce per value, so random
//! nonces never collide in practice) and erased when the job ends.
//!
//! A sealed value is `sealed:v1:<hex of nonce and ciphertext>`; [`Sealer::open`]
//! passes any other value through unchanged (rows written before sealing
//! existed).
//!
//! The key (32 bytes, 64 hex characters) comes from `secret_key` in the
//! config or `DAMSELFLY_MANAGER_SECRET_KEY`. Managers that share a
//! PostgreSQL database must share it, so with PostgreSQL it is required. On
//! SQLite without one, a key file is created beside the database
//! (`<database>.key`, mode 0600) on the first start and read on later ones.

use crate::error::{Error, Result};
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::io::Write;
use std::path::{Path, PathBuf};

const PREFIX: &str = "sealed:v1:";
const NONCE_LEN: usize = 24;
pub const KEY_ENV: &str = "DAMSELFLY_MANAGER_SECRET_KEY";

pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Sealer {
        Sealer {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    pub fn seal(&self, plain: &str) -> String {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let ct = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), plain.as_bytes())
            .expect("XChaCha20-Poly1305 encrypts any length we store");
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        format!("{PREFIX}{}", hex::encode(out))
    }

    /// The plain value of a sealed one (other values are returned as they are).
    pub fn open(&self, stored: &str) -> Result<String> {
        let Some(hex_part) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_string());
        };
        let bad = || {
            Error::Internal("a stored secret cannot be opened: was the manager's secret_key changed?".into())
        };
        let bytes = hex::decode(hex_part).map_err(|_| bad())?;
        if bytes.len() < NONCE_LEN {
            return Err(bad());
        }
        let (nonce, ct) = bytes.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), ct)
            .map_err(|_| bad())?;
        String::from_utf8(plain).map_err(|_| bad())
    }
}

/// Parses a key given as 64 hex characters.
pub fn parse_key(hex_key: &str) -> std::result::Result<[u8; 32], String> {
    let bytes = hex::decode(hex_key.trim()).map_err(|_| "must be 64 hex characters".to_string())?;
    bytes
        .try_into()
        .map_err(|_| "must be 64 hex characters (32 bytes)".to_string())
}

/// The key for `database`: `configured` when given; else, for SQLite, the
/// key file beside the database (created on first use); PostgreSQL needs
/// one configured, because every manager on the database must use the same.
pub fn key_for(database: &str, configured: Option<&str>) -> Result<[u8; 32]> {
    if let Some(k) = configured {
        return parse_key(k).map_err(|m| Error::invalid("secret_key", m));
    }
    let Some(path) = sqlite_path(database) else {
        return Err(Error::invalid(
            "secret_key",
            format!(
                "required with PostgreSQL: every manager on the database needs the same one (or set {KEY_ENV})"
            ),
        ));
    };
    match path {
        // In memory: the data goes away with the process, so may the key.
        None => Ok(rand::random()),
        Some(db_file) => key_file(&key_path(&db_file)),
    }
}

/// `Some(None)` for an in-memory SQLite database, `Some(Some(file))` for a
/// file, `None` when `database` is not SQLite.
fn sqlite_path(database: &str) -> Option<Option<PathBuf>> {
    let rest = database.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let file = rest.split('?').next().unwrap_or("");
    if file.is_empty() || file == ":memory:" {
        return Some(None);
    }
    Some(Some(PathBuf::from(file)))
}

fn key_path(db_file: &Path) -> PathBuf {
    let mut name = db_file.as_os_str().to_owned();
    name.push(".key");
    PathBuf::from(name)
}

/// Reads the key file, or creates it (0600) with a new random key.
fn key_file(path: &Path) -> Result<[u8; 32]> {
    let io = |e: std::io::Error| Error::Internal(format!("secret key file {}: {e}", path.display()));
    match std::fs::read_to_string(path) {
        Ok(s) => {
            return parse_key(&s)
                .map_err(|m| Error::Internal(format!("secret key file {}: {m}", path.display())));
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
        Err(_) => {}
    }
    let key: [u8; 32] = rand::random();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    match opts.open(path) {
        Ok(mut f) => {
            f.write_all(hex::encode(key).as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
            tracing::info!(path = %path.display(), "created the key that seals stored secrets");
            Ok(key)
        }
        // Another manager process on the same file won the race: use its key.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => key_file(path),
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open() {
        let s = Sealer::new(&[7; 32]);
        let a = s.seal("hunter2");
        let b = s.seal("hunter2");
        assert!(a.starts_with(PREFIX) && !a.contains("hunter2"));
        assert_ne!(a, b, "a fresh nonce per value");
        assert_eq!(s.open(&a).unwrap(), "hunter2");
        assert_eq!(
            s.open("plain from an older row").unwrap(),
            "plain from an older row"
        );
        assert!(
            Sealer::new(&[8; 32]).open(&a).is_err(),
            "another key cannot open it"
        );
        let mut tampered = a.clone();
        tampered.pop();
        tampered.push(if a.ends_with('0') { '1' } else { '0' });
        assert!(s.open(&tampered).is_err());
    }

    #[test]
    fn keys_by_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
        let k1 = key_for(&db, None).unwrap();
        let file = dir.path().join("m.db.key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert_eq!(key_for(&db, None).unwrap(), k1, "the same key on the next start");
        assert!(key_for("sqlite::memory:", None).is_ok());
        let e = key_for("postgres://u@h/db", None).unwrap_err().to_string();
        assert!(e.contains("secret_key"), "{e}");
        let hex_key = "ab".repeat(32);
        assert_eq!(key_for("postgres://u@h/db", Some(&hex_key)).unwrap(), [0xab; 32]);
        assert!(key_for(&db, Some("short")).is_err());
    }
}

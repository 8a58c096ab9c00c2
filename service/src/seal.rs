//! Sealed origin headers: a task's credentials travel from the peer that asks for the task,
//! through the scheduler, to the seed the scheduler triggers, and the scheduler never holds
//! them in the clear.
//!
//! Relaying plaintext headers left copies of the credential in the scheduler's memory long
//! after the seed task went out (freed heap, and the receive and send buffers of h2 and tonic,
//! which are reused rather than freed, so nothing this process owns could wipe them). So the
//! scheduler gets only ciphertext:
//! - Each seed makes an X25519 key pair at start-up ([`SealKey`], kept in memory only, wiped
//!   on drop) and announces the public key in its host hello; the scheduler sends every host
//!   the seeds' keys (`SeedKeys`).
//! - A peer seals the headers of a task to each seed key of the task's scheduler ([`seal`]):
//!   an ephemeral X25519 key, HKDF-SHA256 of the shared secret (info: context, both public
//!   keys) as a ChaCha20-Poly1305 key used once, the task id as associated data, so a sealed
//!   blob replayed under another task does not open.
//! - The scheduler forwards the chosen seed's blob in its `SeedTask`; the seed opens it
//!   ([`SealKey::open`]; the decrypted buffer is wiped, the headers it returns are the seed's
//!   to send to the origin).
//!
//! Sealed bytes: the sender's ephemeral public key (32 bytes), then the ciphertext and its
//! 16-byte tag. The plaintext: per header a `u16` name length, the name, a `u16` value length,
//! the value (big-endian lengths).

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, Salt};
use ring::rand::{SecureRandom, SystemRandom};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// Bytes of a public key.
pub const KEY_LEN: usize = 32;
/// Bytes a seal adds to the plaintext: the ephemeral key and the tag.
pub const OVERHEAD: usize = KEY_LEN + 16;
/// Most plaintext bytes of one seal (the scheduler bounds headers to less).
pub const MAX_PLAINTEXT: usize = 64 * 1024;
const CONTEXT: &[u8] = b"damselfly-sealed-headers-v1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the seal key is malformed")]
    BadKey,
    #[error("the sealed headers do not open with this seed's key for this task")]
    Refused,
    #[error("the sealed headers are malformed")]
    Malformed,
    #[error("the headers are too large to seal")]
    TooLarge,
    #[error("no system randomness")]
    Random,
}

fn random32() -> Result<Zeroizing<[u8; 32]>, SealError> {
    let mut b = Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(b.as_mut())
        .map_err(|_| SealError::Random)?;
    Ok(b)
}

fn public_key(bytes: &[u8]) -> Result<PublicKey, SealError> {
    let b: [u8; KEY_LEN] = bytes.try_into().map_err(|_| SealError::BadKey)?;
    Ok(PublicKey::from(b))
}

/// The one-use AEAD key of a (shared secret, ephemeral key, recipient key).
fn aead_key(shared: &[u8; 32], ephemeral: &[u8; 32], recipient: &[u8; 32]) -> Result<LessSafeKey, SealError> {
    let info: [&[u8]; 3] = [CONTEXT, ephemeral, recipient];
    let prk = Salt::new(HKDF_SHA256, &[]).extract(shared);
    let okm = prk
        .expand(&info, &CHACHA20_POLY1305)
        .map_err(|_| SealError::Malformed)?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

/// A seed's key pair for sealed headers. The secret never leaves memory and is wiped on drop.
pub struct SealKey {
    secret: StaticSecret,
    public: [u8; KEY_LEN],
}

impl SealKey {
    pub fn generate() -> Result<SealKey, SealError> {
        let secret = StaticSecret::from(*random32()?);
        let public = PublicKey::from(&secret).to_bytes();
        Ok(SealKey { secret, public })
    }

    /// The public key announced in the host hello.
    pub fn public_key(&self) -> Vec<u8> {
        self.public.to_vec()
    }

    /// Opens headers sealed to this key for `task_id`.
    pub fn open(&self, task_id: &str, sealed: &[u8]) -> Result<Vec<(String, String)>, SealError> {
        if sealed.len() < OVERHEAD || sealed.len() > MAX_PLAINTEXT + OVERHEAD {
            return Err(SealError::Malformed);
        }
        let (ephemeral, ciphertext) = sealed.split_at(KEY_LEN);
        let ephemeral: [u8; KEY_LEN] = ephemeral.try_into().map_err(|_| SealError::Malformed)?;
        let shared = self.secret.diffie_hellman(&PublicKey::from(ephemeral));
        if !shared.was_contributory() {
            return Err(SealError::Refused);
        }
        let key = aead_key(shared.as_bytes(), &ephemeral, &self.public)?;
        let mut buf = Zeroizing::new(ciphertext.to_vec());
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(task_id.as_bytes()),
                buf.as_mut_slice(),
            )
            .map_err(|_| SealError::Refused)?;
        decode(plain)
    }
}

/// Seals `headers` for the holder of `recipient` (a seed's public key), bound to `task_id`.
pub fn seal<'a>(
    recipient: &[u8],
    task_id: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<u8>, SealError> {
    let recipient = public_key(recipient)?;
    let mut plain = Zeroizing::new(Vec::new());
    for (name, value) in headers {
        for part in [name, value] {
            let len = u16::try_from(part.len()).map_err(|_| SealError::TooLarge)?;
            plain.extend_from_slice(&len.to_be_bytes());
            plain.extend_from_slice(part.as_bytes());
        }
    }
    if plain.len() > MAX_PLAINTEXT {
        return Err(SealError::TooLarge);
    }
    let ephemeral = StaticSecret::from(*random32()?);
    let ephemeral_public = PublicKey::from(&ephemeral).to_bytes();
    let shared = ephemeral.diffie_hellman(&recipient);
    if !shared.was_contributory() {
        return Err(SealError::BadKey);
    }
    let key = aead_key(shared.as_bytes(), &ephemeral_public, recipient.as_bytes())?;
    let mut out = Vec::with_capacity(OVERHEAD + plain.len());
    out.extend_from_slice(&ephemeral_public);
    let at = out.len();
    out.extend_from_slice(&plain);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(task_id.as_bytes()),
            &mut out[at..],
        )
        .map_err(|_| SealError::TooLarge)?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

fn decode(mut plain: &[u8]) -> Result<Vec<(String, String)>, SealError> {
    let take = |plain: &mut &[u8]| -> Result<String, SealError> {
        let (len, rest) = plain.split_first_chunk::<2>().ok_or(SealError::Malformed)?;
        let len = u16::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return Err(SealError::Malformed);
        }
        let (part, rest) = rest.split_at(len);
        *plain = rest;
        let s = std::str::from_utf8(part).map_err(|_| SealError::Malformed)?;
        Ok(s.to_string())
    };
    let mut headers = Vec::new();
    while !plain.is_empty() {
        let name = take(&mut plain)?;
        let value = take(&mut plain)?;
        headers.push((name, value));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_open_only_with_the_seeds_key_and_for_their_task() {
        let seed = SealKey::generate().unwrap();
        let other = SealKey::generate().unwrap();
        let headers = [("authorization", "Basic dTpw"), ("x-empty", "")];
        let sealed = seal(&seed.public_key(), "task-a", headers).unwrap();
        assert_eq!(sealed.len(), OVERHEAD + 2 * 2 * 2 + 13 + 10 + 7);
        assert!(
            !sealed.windows(10).any(|w| w == b"Basic dTpw"),
            "the credential is in the clear"
        );
        let opened = seed.open("task-a", &sealed).unwrap();
        assert_eq!(
            opened,
            vec![
                ("authorization".to_string(), "Basic dTpw".to_string()),
                ("x-empty".to_string(), String::new())
            ]
        );
        assert_eq!(other.open("task-a", &sealed), Err(SealError::Refused));
        assert_eq!(seed.open("task-b", &sealed), Err(SealError::Refused));
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(seed.open("task-a", &flipped), Err(SealError::Refused));
        // Two seals of the same headers differ (a fresh ephemeral key each).
        assert_ne!(sealed, seal(&seed.public_key(), "task-a", headers).unwrap());
    }

    #[test]
    fn malformed_keys_and_blobs_are_refused() {
        let seed = SealKey::generate().unwrap();
        assert_eq!(seal(&[1, 2, 3], "t", []).unwrap_err(), SealError::BadKey);
        // The all-zero point gives no shared secret.
        assert_eq!(seal(&[0; 32], "t", []).unwrap_err(), SealError::BadKey);
        assert_eq!(seed.open("t", &[0; 10]), Err(SealError::Malformed));
        assert_eq!(seed.open("t", &[0; OVERHEAD]), Err(SealError::Refused));
        let big = "v".repeat(u16::MAX as usize + 1);
        assert_eq!(
            seal(&seed.public_key(), "t", [("h", big.as_str())]).unwrap_err(),
            SealError::TooLarge
        );
        // No headers seal and open to none.
        let sealed = seal(&seed.public_key(), "t", []).unwrap();
        assert!(seed.open("t", &sealed).unwrap().is_empty());
    }
}

//! Piece tickets: a scheduler's short-lived permission for one child to read one task's pieces.
//!
//! With TLS on, membership of the cluster's CA is not enough to read a task: a parent serves a
//! piece connection only if its `Hello` carries a ticket that a scheduler of this peer signed for
//! that task and for the certificate the child connects with. The scheduler issues one with
//! every parent list it sends a registered peer, so a member that never registered for a task
//! (and anyone replaying another child's ticket with another certificate) is refused.
//!
//! - Signature: Ed25519 (ring). Each scheduler makes a key pair at start-up and sends its public
//!   key first thing on every host stream (over TLS, from a certificate with the scheduler role);
//!   a peer trusts the keys of the schedulers it talks to ([`TicketKeys`]). A restarted
//!   scheduler's new key reaches peers when their host streams reconnect.
//! - Binding: the child's identity is the SHA-256 of the subject (DER) of its verified client
//!   certificate ([`subject_id`]), the same on the scheduler's and the parent's side, and stable
//!   when a certificate is rotated with the same subject.
//! - Ticket bytes: `expires` (u64 big-endian, Unix seconds) then the 64-byte signature of
//!   `"damselfly-piece-ticket-v1" 0 task_id 0 child 0 expires`. It lives [`TICKET_TTL`]; a
//!   parent allows [`CLOCK_SKEW`] between hosts' clocks. Open connections are not checked again.

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a ticket is valid after its issue (every new parent list brings a fresh one).
pub const TICKET_TTL: Duration = Duration::from_secs(600);
/// How far a parent's clock may be behind or ahead of the scheduler's.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Bytes of a ticket: expiry and signature.
pub const TICKET_LEN: usize = 8 + 64;
/// Bytes of a public key.
pub const KEY_LEN: usize = 32;
/// Scheduler keys a peer keeps (the newest; a scheduler makes a new one when it restarts).
pub const MAX_KEYS: usize = 64;
const CONTEXT: &[u8] = b"damselfly-piece-ticket-v1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("no piece ticket (TLS is on: the scheduler issues one to each registered peer)")]
    Missing,
    #[error("the piece ticket is malformed")]
    Malformed,
    #[error("the piece ticket expired")]
    Expired,
    #[error("the piece ticket is not signed by a known scheduler for this task and certificate")]
    Refused,
    #[error("cannot make a ticket key: {0}")]
    Key(String),
}

/// The identity a ticket binds: hex SHA-256 of a certificate's subject (DER).
pub fn subject_id(subject_der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, subject_der);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn message(task_id: &str, child: &str, expires: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + task_id.len() + child.len() + 11);
    m.extend_from_slice(CONTEXT);
    m.push(0);
    m.extend_from_slice(task_id.as_bytes());
    m.push(0);
    m.extend_from_slice(child.as_bytes());
    m.push(0);
    m.extend_from_slice(&expires.to_be_bytes());
    m
}

/// A scheduler's signing key.
pub struct TicketSigner {
    key: Ed25519KeyPair,
}

impl TicketSigner {
    pub fn generate() -> Result<TicketSigner, TicketError> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|e| TicketError::Key(e.to_string()))?;
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| TicketError::Key(e.to_string()))?;
        Ok(TicketSigner { key })
    }

    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    /// A ticket for `child` (a [`subject_id`]) to read `task_id`, valid [`TICKET_TTL`] from `now`.
    pub fn issue(&self, task_id: &str, child: &str, now: SystemTime) -> Vec<u8> {
        let expires = unix(now) + TICKET_TTL.as_secs();
        let mut t = expires.to_be_bytes().to_vec();
        t.extend_from_slice(self.key.sign(&message(task_id, child, expires)).as_ref());
        t
    }
}

/// The scheduler keys a peer accepts tickets from.
#[derive(Debug, Default)]
pub struct TicketKeys {
    keys: RwLock<Vec<[u8; KEY_LEN]>>,
}

impl TicketKeys {
    /// Trusts `key` (from a scheduler's host stream); false if it is not a key.
    pub fn trust(&self, key: &[u8]) -> bool {
        let Ok(key) = <[u8; KEY_LEN]>::try_from(key) else {
            return false;
        };
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        if !keys.contains(&key) {
            if keys.len() == MAX_KEYS {
                keys.remove(0);
            }
            keys.push(key);
        }
        true
    }

    /// Whether `ticket` lets `child` read `task_id` at `now`.
    pub fn check(
        &self,
        ticket: &[u8],
        task_id: &str,
        child: &str,
        now: SystemTime,
    ) -> Result<(), TicketError> {
        if ticket.is_empty() {
            return Err(TicketError::Missing);
        }
        if ticket.len() != TICKET_LEN {
            return Err(TicketError::Malformed);
        }
        let expires = u64::from_be_bytes(ticket[..8].try_into().expect("8 bytes"));
        let now = unix(now);
        if expires.saturating_add(CLOCK_SKEW.as_secs()) < now {
            return Err(TicketError::Expired);
        }
        if expires > now + TICKET_TTL.as_secs() + CLOCK_SKEW.as_secs() {
            return Err(TicketError::Refused);
        }
        let msg = message(task_id, child, expires);
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .any(|k| {
                UnparsedPublicKey::new(&ED25519, k)
                    .verify(&msg, &ticket[8..])
                    .is_ok()
            })
            .then_some(())
            .ok_or(TicketError::Refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_opens_one_task_for_one_certificate_for_a_while() {
        let signer = TicketSigner::generate().unwrap();
        let keys = TicketKeys::default();
        let now = SystemTime::now();
        let t = signer.issue("task", "child", now);
        assert_eq!(t.len(), TICKET_LEN);
        assert_eq!(
            keys.check(&t, "task", "child", now),
            Err(TicketError::Refused),
            "no key yet"
        );
        assert!(keys.trust(&signer.public_key()) && !keys.trust(b"short"));
        assert_eq!(keys.check(&t, "task", "child", now), Ok(()));
        assert_eq!(keys.check(&t, "other", "child", now), Err(TicketError::Refused));
        assert_eq!(keys.check(&t, "task", "someone", now), Err(TicketError::Refused));
        assert_eq!(keys.check(&[], "task", "child", now), Err(TicketError::Missing));
        assert_eq!(
            keys.check(&t[1..], "task", "child", now),
            Err(TicketError::Malformed)
        );
        let later = now + TICKET_TTL + CLOCK_SKEW + Duration::from_secs(2);
        assert_eq!(keys.check(&t, "task", "child", later), Err(TicketError::Expired));
        // A longer life than a scheduler gives, or a flipped bit: refused.
        let mut forged = t.clone();
        forged[..8].copy_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(
            keys.check(&forged, "task", "child", now),
            Err(TicketError::Refused)
        );
        let mut flipped = t.clone();
        flipped[20] ^= 1;
        assert_eq!(
            keys.check(&flipped, "task", "child", now),
            Err(TicketError::Refused)
        );
        // Another scheduler's key is trusted beside the first.
        let other = TicketSigner::generate().unwrap();
        keys.trust(&other.public_key());
        assert_eq!(
            keys.check(&other.issue("task", "child", now), "task", "child", now),
            Ok(())
        );
        assert_eq!(keys.check(&t, "task", "child", now), Ok(()));
    }

    #[test]
    fn subject_ids_are_stable_hex() {
        assert_eq!(subject_id(b"x"), subject_id(b"x"));
        assert_ne!(subject_id(b"x"), subject_id(b"y"));
        assert_eq!(subject_id(b"x").len(), 64);
    }
}

//! What the scheduler takes from a host, checked once where it is decoded.
//!
//! Pure functions over the decoded messages: the gRPC wrapper calls them
//! before anything reaches the state. A registration must name the task its
//! spec describes (the id is derived from the digest, or from the URL, tag and
//! application), and every layout, bitmap and string is bounded before it
//! sizes anything.

use crate::core::CacheMeta;
use crate::core::cache::MAX_REPLICAS;
use crate::error::Error;
use damselfly_proto::layout::{LayoutError, check_piece_length};
use damselfly_proto::piece::Layout;
use damselfly_proto::scheduler::{CacheTask, HostInfo, Register, SourceInfo, StoredTask, TaskSpec};
use damselfly_proto::task_id::{Sha256Digest, cache_task_id, cache_url, id_of_spec};
use damselfly_service::tls::{PeerIdentity, Role};

/// Longest host, peer or task id.
pub const MAX_ID: usize = 256;
/// Longest origin URL.
pub const MAX_URL: usize = 8 * 1024;
/// Most origin headers of one task, and their total size.
pub const MAX_HEADERS: usize = 64;
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most sealed header entries of one task (one per seed of the scheduler), and the size of
/// one: the headers' plaintext bound with its length prefixes, plus the seal's overhead.
pub const MAX_SEALED: usize = 32;
pub const MAX_SEALED_BYTES: usize = MAX_HEADER_BYTES + 4 * MAX_HEADERS + damselfly_service::seal::OVERHEAD;
/// Longest free-text host field (hostname, idc, location).
const MAX_TEXT: usize = 256;

fn bad(m: impl Into<String>) -> Error {
    Error::BadRequest(m.into())
}

fn bounded(field: &str, v: &str, max: usize) -> Result<(), Error> {
    if v.len() > max {
        return Err(bad(format!("{field} is longer than {max} bytes")));
    }
    Ok(())
}

/// A host's hello: ids and texts bounded, a real address and port.
pub fn hello(info: &HostInfo) -> Result<(), Error> {
    if info.host_id.is_empty() || info.ip.is_empty() || info.piece_port == 0 {
        return Err(bad("hello needs host_id, ip and piece_port"));
    }
    bounded("host_id", &info.host_id, MAX_ID)?;
    for (field, v) in [
        ("hostname", &info.hostname),
        ("idc", &info.idc),
        ("location", &info.location),
    ] {
        bounded(field, v, MAX_TEXT)?;
    }
    info.ip
        .parse::<std::net::IpAddr>()
        .map_err(|_| bad(format!("ip {:?} is not an IP address", info.ip)))?;
    if info.piece_port > u16::MAX as u32 {
        return Err(bad(format!("piece_port {} is not a TCP port", info.piece_port)));
    }
    if !info.seal_key.is_empty() && info.seal_key.len() != damselfly_service::seal::KEY_LEN {
        return Err(bad(format!(
            "seal_key has {} bytes, not {}",
            info.seal_key.len(),
            damselfly_service::seal::KEY_LEN
        )));
    }
    Ok(())
}

/// A registration, checked. `layout` is what the registrant claims to hold
/// (a restarted peer), `held` how many pieces its bitmap sets.
#[derive(Debug, PartialEq, Eq)]
pub struct Registration {
    pub layout: Option<Layout>,
    pub held: u32,
}

/// Checks a `Register`: ids present and bounded, the task id derived from the
/// spec, headers bounded, any layout and bitmap within the bounds.
pub fn registration(reg: &Register) -> Result<Registration, Error> {
    let spec = reg
        .spec
        .as_ref()
        .ok_or_else(|| bad("register without a task spec"))?;
    if spec.task_id.is_empty() || reg.peer_id.is_empty() {
        return Err(bad("task_id and peer_id are required"));
    }
    bounded("peer_id", &reg.peer_id, MAX_ID)?;
    bounded("host_id", &reg.host_id, MAX_ID)?;
    bounded("task_id", &spec.task_id, MAX_ID)?;
    bounded("url", &spec.url, MAX_URL)?;
    bounded("tag", &spec.tag, MAX_TEXT)?;
    bounded("application", &spec.application, MAX_TEXT)?;
    let header_bytes: usize = spec.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    if spec.headers.len() > MAX_HEADERS || header_bytes > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "at most {MAX_HEADERS} headers of {MAX_HEADER_BYTES} bytes in all"
        )));
    }
    if spec.sealed_headers.len() > MAX_SEALED {
        return Err(bad(format!("at most {MAX_SEALED} sealed_headers")));
    }
    for s in &spec.sealed_headers {
        bounded("sealed_headers.seed_host_id", &s.seed_host_id, MAX_ID)?;
        if s.sealed.len() > MAX_SEALED_BYTES {
            return Err(bad(format!(
                "sealed_headers.sealed is longer than {MAX_SEALED_BYTES} bytes"
            )));
        }
    }
    let derived = id_of_spec(spec).map_err(bad)?;
    if derived != spec.task_id {
        return Err(bad(format!(
            "task id {} is not the id of its spec (digest, or URL with tag and application)",
            spec.task_id
        )));
    }
    if spec.piece_length != 0 {
        check_piece_length(spec.piece_length as u64).map_err(|e| bad(format!("spec: {e}")))?;
    }
    if reg.piece_length == 0 {
        if reg.content_length != 0 || !reg.bitmap.is_empty() {
            return Err(bad("a bitmap or content length needs a piece length"));
        }
        return Ok(Registration {
            layout: None,
            held: 0,
        });
    }
    let layout = Layout::try_new(reg.content_length, reg.piece_length).map_err(|e| bad(e.to_string()))?;
    let have = layout
        .check_bitmap(layout.piece_count() as u64, &reg.bitmap)
        .map_err(|e| bad(e.to_string()))?;
    Ok(Registration {
        layout: Some(layout),
        held: have.iter().filter(|h| **h).count() as u32,
    })
}

/// The layout a source reports, if it is within the bounds and agrees with
/// what the task already has.
pub fn source_layout(known: Option<Layout>, info: &SourceInfo) -> Result<Layout, LayoutError> {
    Layout::matches(known, Layout::try_new(info.content_length, info.piece_length)?)
}

/// The layout of a task a host says it stores, if within the bounds.
pub fn stored_layout(st: &StoredTask) -> Option<Layout> {
    Layout::try_new(st.content_length, st.piece_length).ok()
}

/// A cache task's parts, checked.
#[derive(Debug)]
pub struct CheckedCache {
    pub spec: TaskSpec,
    pub layout: Layout,
    pub digests: Vec<[u8; 32]>,
    pub meta: CacheMeta,
}

/// A cache task as an importer or a holder describes it: the spec names the
/// id's task, the layout is bounded and there is one digest per piece.
pub fn cache_task(
    spec: Option<&TaskSpec>,
    content_length: u64,
    piece_length: u32,
    cache: Option<&CacheTask>,
) -> Result<CheckedCache, Error> {
    let (Some(spec), Some(c)) = (spec, cache) else {
        return Err(bad("a cache task needs its spec and cache fields"));
    };
    let task_id = cache_task_id(&c.id).map_err(bad)?;
    if spec.task_id != task_id || spec.url != cache_url(&c.id) || !spec.digest.is_empty() {
        return Err(bad(format!("the spec does not name cache id {}", c.id)));
    }
    Sha256Digest::parse(&c.digest).map_err(bad)?;
    bounded("owner_host_id", &c.owner_host_id, MAX_ID)?;
    if c.replicas > MAX_REPLICAS {
        return Err(bad(format!(
            "replicas {} is more than {MAX_REPLICAS}",
            c.replicas
        )));
    }
    let layout = Layout::try_new(content_length, piece_length).map_err(|e| bad(e.to_string()))?;
    if c.piece_digests.len() != 32 * layout.piece_count() as usize {
        return Err(bad(format!(
            "cache id {}: {} bytes of piece digests for {} pieces",
            c.id,
            c.piece_digests.len(),
            layout.piece_count()
        )));
    }
    let digests = c
        .piece_digests
        .chunks_exact(32)
        .map(|d| <[u8; 32]>::try_from(d).expect("32 bytes"))
        .collect();
    let meta = CacheMeta {
        id: c.id.clone(),
        digest: c.digest.clone(),
        replicas: c.replicas,
        created_unix: c.created_unix,
        expires_unix: c.expires_unix,
        owner_host_id: c.owner_host_id.clone(),
    };
    let spec = TaskSpec {
        task_id,
        url: spec.url.clone(),
        ..Default::default()
    };
    Ok(CheckedCache {
        spec,
        layout,
        digests,
        meta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use damselfly_proto::scheduler::TaskSpec;
    use damselfly_proto::task_id::task_id;

    const URL: &str = "http://origin/f.bin";
    const P: u32 = 256 * 1024;

    fn reg() -> Register {
        Register {
            host_id: "h".into(),
            peer_id: "p".into(),
            spec: Some(TaskSpec {
                task_id: task_id(URL, None, "", "").unwrap(),
                url: URL.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn refused(r: &Register) -> String {
        match registration(r) {
            Err(Error::BadRequest(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_plain_registration_passes() {
        assert_eq!(
            registration(&reg()).unwrap(),
            Registration {
                layout: None,
                held: 0
            }
        );
    }

    #[test]
    fn a_task_id_must_be_the_id_of_its_spec() {
        let mut r = reg();
        r.spec.as_mut().unwrap().url = "http://attacker/evil.bin".into();
        assert!(refused(&r).contains("is not the id of its spec"));
        // The digest names a digest task; a URL id with a digest is refused.
        let mut r = reg();
        r.spec.as_mut().unwrap().digest = format!("sha256:{}", "ab".repeat(32));
        assert!(refused(&r).contains("is not the id"));
        r.spec.as_mut().unwrap().task_id = "ab".repeat(32);
        registration(&r).unwrap();
        // A tag changes the id.
        let mut r = reg();
        r.spec.as_mut().unwrap().tag = "t".into();
        assert!(refused(&r).contains("is not the id"));
    }

    #[test]
    fn absurd_layouts_and_bitmaps_are_refused() {
        for (len, piece) in [
            (u32::MAX as u64, 1),
            (1 << 32, 1),
            (1 << 63, P),
            (u64::MAX, 16 << 20),
            (1 << 40, 64 * 1024),
        ] {
            let mut r = reg();
            r.content_length = len;
            r.piece_length = piece;
            refused(&r);
        }
        let mut r = reg();
        r.content_length = 10 * P as u64;
        r.piece_length = P;
        r.bitmap = vec![0xff; 1 << 20];
        assert!(refused(&r).contains("bitmap"));
        r.bitmap = vec![0xff, 0b11];
        assert_eq!(registration(&r).unwrap().held, 10);
        r.piece_length = 0;
        refused(&r);
    }

    #[test]
    fn strings_and_headers_are_bounded() {
        let mut r = reg();
        r.peer_id = "p".repeat(MAX_ID + 1);
        refused(&r);
        let mut r = reg();
        let spec = r.spec.as_mut().unwrap();
        for i in 0..=MAX_HEADERS {
            spec.headers.insert(format!("h{i}"), "v".into());
        }
        refused(&r);
        let mut r = reg();
        r.spec.as_mut().unwrap().piece_length = 3;
        refused(&r);
        let sealed = |n: usize, len: usize| {
            let mut r = reg();
            r.spec.as_mut().unwrap().sealed_headers = (0..n)
                .map(|i| damselfly_proto::scheduler::SealedHeaders {
                    seed_host_id: format!("seed{i}"),
                    sealed: vec![0; len],
                })
                .collect();
            r
        };
        registration(&sealed(MAX_SEALED, MAX_SEALED_BYTES)).unwrap();
        assert!(refused(&sealed(MAX_SEALED + 1, 10)).contains("sealed_headers"));
        assert!(refused(&sealed(1, MAX_SEALED_BYTES + 1)).contains("sealed_headers"));
    }

    #[test]
    fn hellos_name_a_real_address() {
        let ok = HostInfo {
            host_id: "h".into(),
            ip: "10.0.0.1".into(),
            piece_port: 4001,
            ..Default::default()
        };
        hello(&ok).unwrap();
        for bad in [
            HostInfo {
                ip: "not-an-ip".into(),
                ..ok.clone()
            },
            HostInfo {
                piece_port: 70000,
                ..ok.clone()
            },
            HostInfo {
                host_id: "h".repeat(MAX_ID + 1),
                ..ok.clone()
            },
            HostInfo {
                seal_key: vec![1; 31],
                ..ok.clone()
            },
        ] {
            assert!(hello(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_source_layout_must_agree() {
        let info = SourceInfo {
            content_length: 1 << 20,
            piece_length: P,
        };
        let l = source_layout(None, &info).unwrap();
        assert_eq!(source_layout(Some(l), &info), Ok(l));
        let other = Layout::try_new(2 << 20, P).unwrap();
        assert!(source_layout(Some(other), &info).is_err());
        assert!(
            source_layout(
                None,
                &SourceInfo {
                    content_length: 1 << 32,
                    piece_length: 1
                }
            )
            .is_err()
        );
        assert!(
            stored_layout(&StoredTask {
                task_id: "t".into(),
                content_length: u64::MAX,
                piece_length: P,
                cache: None,
            })
            .is_none()
        );
    }

    #[test]
    fn cache_tasks_are_bounded_and_name_their_id() {
        let id = "ccache";
        let spec = TaskSpec {
            task_id: cache_task_id(id).unwrap(),
            url: cache_url(id),
            ..Default::default()
        };
        let cache = CacheTask {
            id: id.into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            replicas: 2,
            piece_digests: vec![1; 32 * 2],
            ..Default::default()
        };
        let c = cache_task(Some(&spec), 2 * P as u64, P, Some(&cache)).unwrap();
        assert_eq!(
            (c.layout.piece_count(), c.digests.len(), c.meta.replicas),
            (2, 2, 2)
        );
        // One digest short; too many replicas; another id's spec; a bad digest.
        let short = CacheTask {
            piece_digests: vec![1; 32],
            ..cache.clone()
        };
        assert!(cache_task(Some(&spec), 2 * P as u64, P, Some(&short)).is_err());
        let many = CacheTask {
            replicas: MAX_REPLICAS + 1,
            ..cache.clone()
        };
        assert!(cache_task(Some(&spec), 2 * P as u64, P, Some(&many)).is_err());
        let other = CacheTask {
            id: "other".into(),
            ..cache.clone()
        };
        assert!(cache_task(Some(&spec), 2 * P as u64, P, Some(&other)).is_err());
        let bad = CacheTask {
            digest: "md5:1".into(),
            ..cache.clone()
        };
        assert!(cache_task(Some(&spec), 2 * P as u64, P, Some(&bad)).is_err());
        assert!(cache_task(Some(&spec), u64::MAX, 1, Some(&cache)).is_err());
    }
}

/// With TLS on (a verified client certificate), a host must hold the peer role, and the seed
/// role to announce itself as a seed: a peer certificate claiming `seed` is refused, so it is
/// never sent a seed task or an origin credential. Without TLS (no identity, or an unverified
/// one) anything goes, as on a trusted network.
pub fn certificate(identity: Option<&PeerIdentity>, claims_seed: bool) -> Result<(), Error> {
    let Some(id) = identity.filter(|id| id.verified) else {
        return Ok(());
    };
    if !id.has(Role::Peer) {
        return Err(Error::Forbidden(
            "the client certificate does not grant the peer role".into(),
        ));
    }
    if claims_seed && !id.has(Role::Seed) {
        return Err(Error::Forbidden(
            "seed: true needs a certificate with the seed role".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod certificate_tests {
    use super::*;

    #[test]
    fn only_seed_certificates_announce_seeds() {
        let id = |roles: Vec<Role>| PeerIdentity {
            remote: None,
            roles,
            verified: true,
            tls: true,
            subject: None,
        };
        assert!(certificate(None, true).is_ok());
        assert!(certificate(Some(&PeerIdentity::default()), true).is_ok());
        assert!(certificate(Some(&id(vec![Role::Peer])), false).is_ok());
        assert!(matches!(
            certificate(Some(&id(vec![Role::Peer])), true),
            Err(Error::Forbidden(_))
        ));
        assert!(certificate(Some(&id(vec![Role::Peer, Role::Seed])), true).is_ok());
        assert!(matches!(
            certificate(Some(&id(vec![Role::Scheduler])), false),
            Err(Error::Forbidden(_))
        ));
    }
}

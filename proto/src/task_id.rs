//! Task ids: the name of one swarm.
//!
//! Content with a known sha256 digest (every OCI blob, `get --digest`) is
//! named by that digest, so one layer pulled from many repositories or
//! registries is one swarm. Anything else is named by a hash of its URL with
//! signing query parameters removed (a presigned S3 URL changes its signature
//! on every request, but not its object), plus the caller's tag and
//! application, which tell apart different contents behind one URL.

use sha2::{Digest, Sha256};

/// Query parameters that sign a URL rather than name an object
/// (prefix match, case-insensitive).
pub const SIGNING_PARAM_PREFIXES: &[&str] = &[
    "x-amz-",
    "x-goog-",
    "x-oss-",
    "signature",
    "expires",
    "awsaccesskeyid",
    "ossaccesskeyid",
    "security-token",
];

/// A parsed `sha256:<64 hex>` digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// Parses `sha256:<64 lowercase hex>`; anything else is an error message.
    pub fn parse(s: &str) -> Result<Self, String> {
        let hex_part = s
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("digest {s:?} must start with \"sha256:\""))?;
        if hex_part.len() != 64
            || !hex_part.bytes().all(|b| b.is_ascii_hexdigit())
            || hex_part.bytes().any(|b| b.is_ascii_uppercase())
        {
            return Err(format!(
                "digest {s:?} must be sha256: followed by 64 lowercase hex digits"
            ));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|e| e.to_string())?;
        Ok(Self(out))
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

/// The URL with signing query parameters removed, the rest in their order.
pub fn canonical_url(raw: &str) -> Result<String, String> {
    let mut url = url::Url::parse(raw).map_err(|e| format!("bad URL {raw:?}: {e}"))?;
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| {
            let k = k.to_ascii_lowercase();
            !SIGNING_PARAM_PREFIXES.iter().any(|p| k.starts_with(p))
        })
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
    url.set_fragment(None);
    Ok(url.to_string())
}

/// The task id of a download.
pub fn task_id(
    url: &str,
    digest: Option<&Sha256Digest>,
    tag: &str,
    application: &str,
) -> Result<String, String> {
    if let Some(d) = digest {
        return Ok(d.hex());
    }
    let mut h = Sha256::new();
    h.update(canonical_url(url)?.as_bytes());
    for part in [tag, application] {
        h.update([0u8]);
        h.update(part.as_bytes());
    }
    Ok(hex::encode(h.finalize()))
}

/// Longest cache id (`damselfly cache import --id`).
pub const MAX_CACHE_ID: usize = 128;

/// A cache id is 1-128 of `a-z0-9._-` (a file's sha256 hex by default).
pub fn check_cache_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_CACHE_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "cache id {id:?} must be 1 to {MAX_CACHE_ID} lowercase letters, digits, '.', '_' or '-'"
        ))
    }
}

/// The URL that names a cache task (there is no origin behind it).
pub fn cache_url(id: &str) -> String {
    format!("cache://{id}")
}

/// The task id of a cache id.
pub fn cache_task_id(id: &str) -> Result<String, String> {
    check_cache_id(id)?;
    task_id(&cache_url(id), None, "", "")
}

/// The id `spec` must carry: derived from its digest, or else from its URL,
/// tag and application. A spec whose id differs names another task.
pub fn id_of_spec(spec: &crate::scheduler::TaskSpec) -> Result<String, String> {
    let digest = if spec.digest.is_empty() {
        None
    } else {
        Some(Sha256Digest::parse(&spec.digest)?)
    };
    task_id(&spec.url, digest.as_ref(), &spec.tag, &spec.application)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_ids_are_checked() {
        let hex = "ab".repeat(32);
        assert!(cache_task_id(&hex).is_ok());
        assert!(cache_task_id("build-cache_v1.2").is_ok());
        for bad in ["", "Upper", "a/b", "a b", &"x".repeat(129)] {
            assert!(cache_task_id(bad).is_err(), "{bad:?}");
        }
        assert_ne!(cache_task_id("a").unwrap(), cache_task_id("b").unwrap());
    }

    #[test]
    fn a_spec_names_its_own_id() {
        use crate::scheduler::TaskSpec;
        let mut spec = TaskSpec {
            url: "http://h/f?X-Amz-Signature=1".into(),
            tag: "t".into(),
            ..Default::default()
        };
        assert_eq!(
            id_of_spec(&spec).unwrap(),
            task_id("http://h/f", None, "t", "").unwrap()
        );
        spec.digest = format!("sha256:{}", "cd".repeat(32));
        assert_eq!(id_of_spec(&spec).unwrap(), "cd".repeat(32));
        spec.digest = "sha256:zz".into();
        assert!(id_of_spec(&spec).is_err());
    }

    #[test]
    fn signing_params_do_not_change_the_id() {
        let a = task_id(
            "https://b.example/o?X-Amz-Signature=1&X-Amz-Date=2&v=1",
            None,
            "",
            "",
        )
        .unwrap();
        let b = task_id("https://b.example/o?v=1&X-Amz-Signature=9", None, "", "").unwrap();
        assert_eq!(a, b);
        let c = task_id("https://b.example/o?v=2", None, "", "").unwrap();
        assert_ne!(a, c);
    }

    #[test]
    fn tag_and_application_split_tasks() {
        let u = "http://h/f";
        let base = task_id(u, None, "", "").unwrap();
        assert_ne!(base, task_id(u, None, "t", "").unwrap());
        assert_ne!(
            task_id(u, None, "a", "").unwrap(),
            task_id(u, None, "", "a").unwrap()
        );
    }

    #[test]
    fn digest_names_the_task() {
        let d = Sha256Digest::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap();
        assert_eq!(
            task_id("http://x/y", Some(&d), "t", "a").unwrap(),
            "ab".repeat(32)
        );
        assert_eq!(d.to_string(), format!("sha256:{}", "ab".repeat(32)));
    }

    #[test]
    fn bad_digests_are_refused() {
        for bad in [
            "",
            "sha256:",
            "md5:00",
            "sha256:xyz",
            &format!("sha256:{}", "AB".repeat(32)),
        ] {
            assert!(Sha256Digest::parse(bad).is_err(), "{bad}");
        }
        assert!(canonical_url("not a url").is_err());
    }
}

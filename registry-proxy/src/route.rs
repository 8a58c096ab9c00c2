//! What a request asks for: the distribution API route, validated.
//!
//! Repository names, tags and digests are checked against the grammar of
//! the OCI distribution spec before anything reaches the origin, so path
//! tricks (`..`, `%2e`, empty segments) never leave the proxy.

use crate::error::ProxyError;

/// Longest repository name accepted (the spec recommends at least 255).
pub const MAX_NAME_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(String),
}

impl Reference {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Tag(s) | Self::Digest(s) => s,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`
    Base,
    Manifest {
        name: String,
        reference: Reference,
    },
    Blob {
        name: String,
        digest: String,
    },
    Tags {
        name: String,
    },
    Referrers {
        name: String,
        digest: String,
    },
}

impl Route {
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Base => None,
            Self::Manifest { name, .. }
            | Self::Blob { name, .. }
            | Self::Tags { name }
            | Self::Referrers { name, .. } => Some(name),
        }
    }

    /// The path of this route at the origin.
    pub fn origin_path(&self) -> String {
        match self {
            Self::Base => "/v2/".to_string(),
            Self::Manifest { name, reference } => {
                format!("/v2/{name}/manifests/{}", reference.as_str())
            }
            Self::Blob { name, digest } => format!("/v2/{name}/blobs/{digest}"),
            Self::Tags { name } => format!("/v2/{name}/tags/list"),
            Self::Referrers { name, digest } => format!("/v2/{name}/referrers/{digest}"),
        }
    }
}

/// Parses a request path (not URL-decoded: `%` is in no valid name).
pub fn parse_path(path: &str) -> Result<Route, ProxyError> {
    if path == "/v2" || path == "/v2/" {
        return Ok(Route::Base);
    }
    let rest = path.strip_prefix("/v2/").ok_or(ProxyError::RouteUnknown)?;
    let segments: Vec<&str> = rest.split('/').collect();
    let n = segments.len();
    if n < 3 {
        return Err(ProxyError::RouteUnknown);
    }
    let name_of = |upto: usize| -> Result<String, ProxyError> {
        let name = segments[..upto].join("/");
        validate_name(&name)?;
        Ok(name)
    };
    match (segments[n - 2], segments[n - 1]) {
        ("tags", "list") => Ok(Route::Tags {
            name: name_of(n - 2)?,
        }),
        ("manifests", reference) => {
            let name = name_of(n - 2)?;
            let reference = if reference.contains(':') {
                validate_digest(reference)?;
                Reference::Digest(reference.to_string())
            } else {
                validate_tag(reference)?;
                Reference::Tag(reference.to_string())
            };
            Ok(Route::Manifest { name, reference })
        }
        ("blobs", digest) => {
            let name = name_of(n - 2)?;
            validate_digest(digest)?;
            Ok(Route::Blob {
                name,
                digest: digest.to_string(),
            })
        }
        ("referrers", digest) => {
            let name = name_of(n - 2)?;
            validate_digest(digest)?;
            Ok(Route::Referrers {
                name,
                digest: digest.to_string(),
            })
        }
        _ => Err(ProxyError::RouteUnknown),
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`
pub fn validate_name(name: &str) -> Result<(), ProxyError> {
    let bad = |why: &str| ProxyError::NameInvalid(format!("{why}: {:?}", truncate(name)));
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(bad("length"));
    }
    for component in name.split('/') {
        let b = component.as_bytes();
        let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
            return Err(bad("component must start and end with [a-z0-9]"));
        }
        let mut i = 0;
        while i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            // A separator: ".", "_", "__" or one or more "-".
            let start = i;
            match b[i] {
                b'.' => i += 1,
                b'_' => {
                    i += 1;
                    if i < b.len() && b[i] == b'_' {
                        i += 1;
                    }
                }
                b'-' => {
                    while i < b.len() && b[i] == b'-' {
                        i += 1;
                    }
                }
                _ => return Err(bad("character not allowed")),
            }
            if i >= b.len() || !alnum(b[i]) || i == start {
                return Err(bad("separator must be followed by [a-z0-9]"));
            }
        }
    }
    Ok(())
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
pub fn validate_tag(tag: &str) -> Result<(), ProxyError> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ProxyError::TagInvalid(format!("{:?}", truncate(tag))))
    }
}

/// `algorithm:encoded` per the OCI image spec; sha256 and sha512 must have
/// the right length of lowercase hex.
pub fn validate_digest(digest: &str) -> Result<(), ProxyError> {
    let bad = |why: &str| ProxyError::DigestInvalid(format!("{why}: {:?}", truncate(digest)));
    let (algorithm, encoded) = digest.split_once(':').ok_or_else(|| bad("no algorithm"))?;
    let alg_ok = !algorithm.is_empty()
        && algorithm.len() <= 32
        && algorithm
            .split(['+', '.', '_', '-'])
            .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    if !alg_ok {
        return Err(bad("bad algorithm"));
    }
    let lower_hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let ok = match algorithm {
        "sha256" => lower_hex(encoded, 64),
        "sha512" => lower_hex(encoded, 128),
        _ => {
            !encoded.is_empty()
                && encoded.len() <= 1024
                && encoded
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'))
        }
    };
    if ok { Ok(()) } else { Err(bad("bad encoding")) }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(80) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The registry a request is for (`?ns=`, already URL-decoded), checked to be
/// a bare `host[:port]`.
pub fn validate_registry_host(host: &str) -> Result<(), ProxyError> {
    let bad = || ProxyError::BadRequest(format!("bad registry host in ns: {:?}", truncate(host)));
    if host.is_empty()
        || host.len() > 255
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
    {
        return Err(bad());
    }
    let url = url::Url::parse(&format!("http://{host}/")).map_err(|_| bad())?;
    if url.host_str().is_none() || url.path() != "/" {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    #[test]
    fn routes() {
        assert_eq!(parse_path("/v2/").unwrap(), Route::Base);
        assert_eq!(parse_path("/v2").unwrap(), Route::Base);
        assert_eq!(
            parse_path("/v2/library/busybox/manifests/latest").unwrap(),
            Route::Manifest {
                name: "library/busybox".into(),
                reference: Reference::Tag("latest".into())
            }
        );
        assert_eq!(
            parse_path(&format!("/v2/a/b/c/blobs/{D}")).unwrap(),
            Route::Blob {
                name: "a/b/c".into(),
                digest: D.into()
            }
        );
        // A repository may be called "blobs" or "manifests".
        assert_eq!(
            parse_path(&format!("/v2/blobs/manifests/{D}")).unwrap(),
            Route::Manifest {
                name: "blobs".into(),
                reference: Reference::Digest(D.into())
            }
        );
        assert_eq!(
            parse_path("/v2/x/tags/list").unwrap(),
            Route::Tags { name: "x".into() }
        );
        assert_eq!(
            parse_path(&format!("/v2/x/referrers/{D}")).unwrap().origin_path(),
            format!("/v2/x/referrers/{D}")
        );
    }

    #[test]
    fn bad_routes() {
        for p in [
            "/",
            "/v1/",
            "/v2/x",
            "/v2/x/y",
            "/v2/x/uploads/",
            "/v2/x/blobs/uploads/",
        ] {
            assert!(parse_path(p).is_err(), "{p}");
        }
        for p in [
            "/v2/../etc/blobs/sha256:00",
            "/v2/a/../../b/manifests/latest",
            "/v2/%2e%2e/manifests/latest",
            "/v2//manifests/latest",
            "/v2/A/manifests/latest",
            "/v2/a-/manifests/latest",
            "/v2/a___b/manifests/latest",
        ] {
            assert!(matches!(parse_path(p), Err(ProxyError::NameInvalid(_))), "{p}");
        }
        let long = format!("/v2/{}/manifests/latest", "a".repeat(300));
        assert!(matches!(parse_path(&long), Err(ProxyError::NameInvalid(_))));
    }

    #[test]
    fn names() {
        for ok in [
            "a",
            "a/b",
            "a.b",
            "a_b",
            "a__b",
            "a---b",
            "library/busybox",
            "0/1",
        ] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "a/", "/a", "a..b", "a._b", "-a", "a b", "a/./b"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn digests_and_tags() {
        validate_digest(D).unwrap();
        validate_digest(&format!("sha512:{}", "a".repeat(128))).unwrap();
        validate_digest("multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8").unwrap();
        for bad in [
            "sha256:totallywrong",
            "sha256:",
            ":abc",
            "sha256:2C26B46B68FFC68FF99B453C1D30413413422D706483BFA0F98A5E886266E7AE",
            &format!("sha256:{}", "a".repeat(63)),
            "SHA256:aa",
            "sha256:aa/..",
        ] {
            assert!(
                matches!(validate_digest(bad), Err(ProxyError::DigestInvalid(_))),
                "{bad}"
            );
        }
        validate_tag("latest").unwrap();
        validate_tag("_v1.2-rc").unwrap();
        for bad in ["", ".x", "-x", "a/b", &"a".repeat(129)] {
            assert!(validate_tag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn registry_hosts() {
        for ok in ["docker.io", "127.0.0.1:5000", "[::1]:5000", "reg-1.example.com"] {
            validate_registry_host(ok).unwrap();
        }
        for bad in ["", "a/b", "user@h", "h?x", "http://h", "h#f", "a b"] {
            assert!(validate_registry_host(bad).is_err(), "{bad}");
        }
    }
}

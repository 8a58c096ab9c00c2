//! Image references as users and containerd write them: `[scheme://]registry/repo[:tag][@digest]`,
//! with Docker Hub's short forms (`busybox`, `library/busybox`). Checked before any part names a
//! URL: repository components as the distribution spec allows them, a tag or a digest.

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `Some("http")`/`Some("https")` when written in the reference.
    pub scheme: Option<String>,
    /// The registry's name as clients write it (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// With `library/` for Docker Hub's official images.
    pub repository: String,
    /// The digest when one is given, else the tag (`latest` by default).
    pub reference: String,
}

/// Where Docker Hub's API lives (`docker.io` is only its name).
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, String> {
        let (scheme, rest) = match s.split_once("://") {
            Some((sch, rest)) if sch == "http" || sch == "https" => (Some(sch.to_string()), rest),
            Some(_) => return Err("scheme must be http or https".into()),
            None => (None, s),
        };
        if rest.is_empty() || rest.len() > 1024 || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("not an image reference".into());
        }
        let (name, digest) = match rest.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (rest, None),
        };
        // A tag is the part after a ':' that follows the last '/'.
        let last = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last..].rfind(':') {
            Some(c) => (&name[..last + c], Some(&name[last + c + 1..])),
            None => (name, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ if name.contains('/') => ("docker.io".to_string(), name.to_string()),
            _ => ("docker.io".to_string(), format!("library/{name}")),
        };
        let registry = if registry == DOCKER_HUB_API_HOST || registry == "index.docker.io" {
            "docker.io".to_string()
        } else {
            registry
        };
        let valid_registry = registry.len() <= 255
            && registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
        if !valid_registry {
            return Err(format!("registry {registry:?} is not a valid host name"));
        }
        let valid_repo = !repository.is_empty()
            && repository.len() <= 255
            && repository.split('/').all(|c| {
                !c.is_empty()
                    && c != "."
                    && c != ".."
                    && c.chars()
                        .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
            });
        if !valid_repo {
            return Err(format!("repository {repository:?} is not a valid name"));
        }
        if let Some(t) = tag {
            let valid_tag = !t.is_empty()
                && t.len() <= 128
                && t.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !valid_tag {
                return Err(format!("tag {t:?} is not valid"));
            }
        }
        let reference = match digest {
            Some(d) => {
                let valid = d.split_once(':').is_some_and(|(a, h)| {
                    !a.is_empty() && h.len() >= 32 && h.chars().all(|c| c.is_ascii_hexdigit())
                });
                if !valid {
                    return Err(format!("digest {d:?} is not valid"));
                }
                d.to_string()
            }
            None => tag.unwrap_or("latest").to_string(),
        };
        Ok(ImageRef {
            scheme,
            registry,
            repository,
            reference,
        })
    }

    /// The host of the registry's API (`registry-1.docker.io` for `docker.io`).
    pub fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }

    /// `scheme://api_host`: the scheme written in the reference, else `http` for the
    /// registries in `plain_http`, else `https`.
    pub fn base(&self, plain_http: &[String]) -> String {
        let scheme = self.scheme.clone().unwrap_or_else(|| {
            if plain_http
                .iter()
                .any(|h| h == &self.registry || h == self.api_host())
            {
                "http".into()
            } else {
                "https".into()
            }
        });
        format!("{scheme}://{}", self.api_host())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(s: &str) -> Option<(String, String, String)> {
        ImageRef::parse(s)
            .ok()
            .map(|r| (r.registry, r.repository, r.reference))
    }

    #[test]
    fn references() {
        let p = |a: &str, b: &str, c: &str| Some((a.to_string(), b.to_string(), c.to_string()));
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            parts("127.0.0.1:5000/test/app:latest"),
            p("127.0.0.1:5000", "test/app", "latest")
        );
        assert_eq!(parts("busybox"), p("docker.io", "library/busybox", "latest"));
        assert_eq!(parts("busybox:1.36"), p("docker.io", "library/busybox", "1.36"));
        assert_eq!(parts("user/app"), p("docker.io", "user/app", "latest"));
        assert_eq!(
            parts("registry-1.docker.io/library/x"),
            p("docker.io", "library/x", "latest")
        );
        assert_eq!(parts("localhost/a/b"), p("localhost", "a/b", "latest"));
        assert_eq!(
            parts(&format!("reg.local:5000/x/y:v1@{d}")),
            p("reg.local:5000", "x/y", &d)
        );
        assert_eq!(parts(&format!("reg.local/x/y@{d}")), p("reg.local", "x/y", &d));
        let r = ImageRef::parse(&format!("http://reg.local/x/y@{d}")).unwrap();
        assert_eq!(r.scheme.as_deref(), Some("http"));
        assert_eq!(
            ImageRef::parse("busybox").unwrap().base(&[]),
            "https://registry-1.docker.io"
        );
        assert_eq!(
            ImageRef::parse("reg.local:5000/a")
                .unwrap()
                .base(&["reg.local:5000".into()]),
            "http://reg.local:5000"
        );
        for bad in [
            "reg.local/UPPER:1",
            "ftp://x/y",
            "reg.local/x:'; DROP TABLE users;--",
            "reg.local/../etc",
            "reg.local/a//b",
            "reg.local/a@sha256:xyz",
            "reg.local/a:",
            "",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }
}

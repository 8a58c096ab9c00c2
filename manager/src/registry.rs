//! Resolving an image reference into its layers with the OCI distribution
//! API: manifest or index (Docker v2 and OCI media types), Basic auth, and
//! the Bearer token flow (`WWW-Authenticate: Bearer realm=...,service=...,scope=...`).

use crate::error::{Error, Result};
use damselfly_service::secret::Secret;
use serde::Deserialize;
use std::collections::BTreeMap;

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// `[scheme://]host[:port]/repo/path[:tag|@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `Some("http")`/`Some("https")` when written in the reference.
    pub scheme: Option<String>,
    pub host: String,
    pub repository: String,
    /// A tag or a digest.
    pub reference: String,
}

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
        let (host, path) = match rest.split_once('/') {
            Some((h, p)) if h.contains('.') || h.contains(':') || h == "localhost" => {
                (h.to_string(), p.to_string())
            }
            _ => ("registry-1.docker.io".to_string(), rest.to_string()),
        };
        let (repo, reference) = if let Some((r, d)) = path.split_once('@') {
            (r.to_string(), d.to_string())
        } else {
            match path.rsplit_once(':') {
                Some((r, t)) if !t.contains('/') => (r.to_string(), t.to_string()),
                _ => (path.clone(), "latest".to_string()),
            }
        };
        let repo = if host == "registry-1.docker.io" && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo
        };
        let valid_repo = !repo.is_empty()
            && repo.split('/').all(|c| {
                !c.is_empty()
                    && c.chars()
                        .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
            });
        if !valid_repo {
            return Err(format!("repository {repo:?} is not a valid name"));
        }
        let valid_ref = if reference.contains(':') {
            reference.split_once(':').is_some_and(|(a, h)| {
                !a.is_empty() && h.len() >= 32 && h.chars().all(|c| c.is_ascii_hexdigit())
            })
        } else {
            !reference.is_empty()
                && reference.len() <= 128
                && reference
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        };
        if !valid_ref {
            return Err(format!("tag or digest {reference:?} is not valid"));
        }
        Ok(ImageRef {
            scheme,
            host,
            repository: repo,
            reference,
        })
    }

    pub fn base(&self, plain_http: &[String]) -> String {
        let scheme = self.scheme.clone().unwrap_or_else(|| {
            if plain_http.iter().any(|h| h == &self.host) {
                "http".into()
            } else {
                "https".into()
            }
        });
        format!("{scheme}://{}", self.host)
    }
}

/// One blob to preheat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub url: String,
    pub digest: String,
    pub size: i64,
    /// Headers the seed must send (the credential that worked, if any).
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    _media_type: String,
    digest: String,
    #[serde(default)]
    size: i64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

pub struct Resolver {
    client: reqwest::Client,
    plain_http: Vec<String>,
}

pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

impl Resolver {
    pub fn new(plain_http: Vec<String>) -> Result<Resolver> {
        crate::install_crypto_provider();
        let client = reqwest::Client::builder()
            .user_agent(concat!("damselfly-manager/", env!("CARGO_PKG_VERSION")))
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Internal(format!("http client: {e}")))?;
        Ok(Resolver { client, plain_http })
    }

    /// The layers of `image` for `platform` (`os/arch[/variant]`).
    pub async fn layers(
        &self,
        image: &ImageRef,
        platform: &str,
        creds: Option<&Credentials>,
    ) -> Result<Vec<Layer>> {
        let base = image.base(&self.plain_http);
        let url = format!("{base}/v2/{}/manifests/{}", image.repository, image.reference);
        let (manifest, auth) = self.fetch_manifest(&url, image, creds, None).await?;
        let manifest = if !manifest.manifests.is_empty()
            || manifest.media_type.contains("index")
            || manifest.media_type.contains("list")
        {
            let want: Vec<&str> = platform.split('/').collect();
            let chosen = manifest
                .manifests
                .iter()
                .find(|m| {
                    m.platform.as_ref().is_some_and(|p| {
                        p.os == want[0]
                            && p.architecture == want[1]
                            && (want.len() < 3 || p.variant.as_deref() == Some(want[2]))
                    })
                })
                .ok_or_else(|| Error::Upstream {
                    context: format!("{}/{}", image.host, image.repository),
                    message: format!("the index has no manifest for platform {platform}"),
                })?;
            let url = format!("{base}/v2/{}/manifests/{}", image.repository, chosen.digest);
            self.fetch_manifest(&url, image, creds, auth.clone()).await?.0
        } else {
            manifest
        };
        let mut headers = BTreeMap::new();
        if let Some(a) = &auth {
            headers.insert("Authorization".to_string(), a.clone());
        }
        Ok(manifest
            .layers
            .iter()
            .map(|l| Layer {
                url: format!("{base}/v2/{}/blobs/{}", image.repository, l.digest),
                digest: l.digest.clone(),
                size: l.size,
                headers: headers.clone(),
            })
            .collect())
    }

    /// GETs a manifest, answering an auth challenge once. Returns the
    /// manifest and the Authorization value that worked.
    async fn fetch_manifest(
        &self,
        url: &str,
        image: &ImageRef,
        creds: Option<&Credentials>,
        auth: Option<String>,
    ) -> Result<(Manifest, Option<String>)> {
        let upstream = |m: String| Error::Upstream {
            context: format!("registry {}", image.host),
            message: m,
        };
        let send = |auth: Option<String>| {
            let mut req = self.client.get(url).header(reqwest::header::ACCEPT, ACCEPT);
            if let Some(a) = auth {
                req = req.header(reqwest::header::AUTHORIZATION, a);
            }
            req.send()
        };
        let mut auth = auth;
        let mut resp = send(auth.clone()).await.map_err(|e| upstream(e.to_string()))?;
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
            let challenge = resp
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let a = self.answer(&challenge, image, creds).await?;
            auth = Some(a);
            resp = send(auth.clone()).await.map_err(|e| upstream(e.to_string()))?;
        }
        let status = resp.status();
        if !status.is_success() {
            return Err(upstream(format!("GET {url}: HTTP {status}")));
        }
        let body = resp.bytes().await.map_err(|e| upstream(e.to_string()))?;
        let manifest: Manifest =
            serde_json::from_slice(&body).map_err(|e| upstream(format!("bad manifest: {e}")))?;
        Ok((manifest, auth))
    }

    async fn answer(&self, challenge: &str, image: &ImageRef, creds: Option<&Credentials>) -> Result<String> {
        let upstream = |m: String| Error::Upstream {
            context: format!("registry {}", image.host),
            message: m,
        };
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            let c =
                creds.ok_or_else(|| upstream("the registry wants credentials and none were given".into()))?;
            return Ok(basic(&c.username, c.password.expose()));
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(upstream(format!("unsupported auth challenge {scheme:?}")));
        }
        let params = parse_challenge(params);
        let realm = params
            .get("realm")
            .ok_or_else(|| upstream("bearer challenge without realm".into()))?;
        let mut url = url::Url::parse(realm).map_err(|e| upstream(format!("bad realm: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = params.get("service") {
                q.append_pair("service", s);
            }
            let scope = params
                .get("scope")
                .cloned()
                .unwrap_or_else(|| format!("repository:{}:pull", image.repository));
            q.append_pair("scope", &scope);
        }
        let mut req = self.client.get(url);
        if let Some(c) = creds {
            req = req.header(
                reqwest::header::AUTHORIZATION,
                basic(&c.username, c.password.expose()),
            );
        }
        let resp = req
            .send()
            .await
            .map_err(|e| upstream(format!("token request: {e}")))?;
        if !resp.status().is_success() {
            return Err(upstream(format!("token request: HTTP {}", resp.status())));
        }
        #[derive(Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: TokenAnswer = resp
            .json()
            .await
            .map_err(|e| upstream(format!("token answer: {e}")))?;
        let token = t
            .token
            .or(t.access_token)
            .ok_or_else(|| upstream("token answer without a token".into()))?;
        Ok(format!("Bearer {token}"))
    }
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
}

/// Standard base64 with padding (the only encoding the manager needs).
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `realm="https://auth",service="registry",scope="repository:a:pull"`.
fn parse_challenge(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (v, after) = if let Some(stripped) = after.strip_prefix('"') {
            match stripped.split_once('"') {
                Some((v, a)) => (v.to_string(), a),
                None => (stripped.to_string(), ""),
            }
        } else {
            match after.split_once(',') {
                Some((v, a)) => (v.trim().to_string(), a),
                None => (after.trim().to_string(), ""),
            }
        };
        out.insert(k, v);
        rest = after.trim_start_matches(',').trim();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = ImageRef::parse("127.0.0.1:5000/test/app:latest").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repository.as_str(), r.reference.as_str()),
            ("127.0.0.1:5000", "test/app", "latest")
        );
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repository.as_str(), r.reference.as_str()),
            ("registry-1.docker.io", "library/busybox", "latest")
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("http://reg.local/x/y@{d}")).unwrap();
        assert_eq!(r.scheme.as_deref(), Some("http"));
        assert_eq!(r.reference, d);
        assert!(ImageRef::parse("reg.local/UPPER:1").is_err());
        assert!(ImageRef::parse("ftp://x/y").is_err());
        assert!(ImageRef::parse("reg.local/x:'; DROP TABLE users;--").is_err());
    }

    #[test]
    fn challenges_and_base64() {
        let c = parse_challenge(
            r#"realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        );
        assert_eq!(c["realm"], "https://auth.example/token");
        assert_eq!(c["service"], "registry.example");
        assert_eq!(c["scope"], "repository:a/b:pull");
        assert_eq!(base64(b"alice:secret"), "YWxpY2U6c2VjcmV0");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
    }
}

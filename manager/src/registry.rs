//! Resolving an image reference into its layers with the OCI distribution
//! API: manifest or index (Docker v2 and OCI media types). Challenges are answered by the
//! registry proxy's [`auth`] (Basic, Bearer tokens), the one registry client of the project.

use crate::error::{Error, Result};
pub use damselfly_registry_proxy::reference::ImageRef;
use damselfly_registry_proxy::{auth, auth::Challenge};
use damselfly_service::secret::Secret;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Bounds a token request.
const TOKEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

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
                    context: format!("{}/{}", image.registry, image.repository),
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
            context: format!("registry {}", image.registry),
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
            context: format!("registry {}", image.registry),
            message: m,
        };
        let challenge = Challenge::parse(challenge)
            .ok_or_else(|| upstream(format!("unsupported auth challenge {challenge:?}")))?;
        let scope = format!("repository:{}:pull", image.repository);
        let creds = creds.map(|c| (c.username.as_str(), &c.password));
        let (auth, _expires_in) = auth::answer(&self.client, &challenge, creds, Some(&scope), TOKEN_TIMEOUT)
            .await
            .map_err(|e| upstream(e.to_string()))?;
        Ok(auth.expose().to_string())
    }
}

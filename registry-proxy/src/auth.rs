//! Registry authentication as every Damselfly client of a registry does it (the registry
//! proxy, the manager's preheat resolver): `WWW-Authenticate` challenges parsed, answered with
//! Basic credentials or a Bearer token fetched from the challenge's realm. Credentials and
//! tokens are [`Secret`]s: they never reach a log line.

use crate::upstream::read_limited;
use base64::Engine as _;
use damselfly_service::secret::Secret;
use http::header;
use std::time::Duration;
use url::Url;

/// Largest token answer read into memory.
const TOKEN_BODY_LIMIT: usize = 64 * 1024;

/// Why a challenge got no answer (never contains a credential).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the registry wants credentials and none are configured")]
    NoCredentials,
    #[error("token request: {0}")]
    Token(String),
}

/// Answers `challenge` with `creds` (`user`, `password`): the Authorization value and, for a
/// token, how many seconds it is valid. `default_scope` is asked for when the challenge names
/// no scope (e.g. `repository:library/busybox:pull`).
pub async fn answer(
    client: &reqwest::Client,
    challenge: &Challenge,
    creds: Option<(&str, &Secret)>,
    default_scope: Option<&str>,
    timeout: Duration,
) -> Result<(Secret, Option<u64>), AuthError> {
    match challenge {
        Challenge::Basic => {
            let (user, pass) = creds.ok_or(AuthError::NoCredentials)?;
            Ok((basic(user, pass), None))
        }
        Challenge::Bearer {
            realm,
            service,
            scope,
        } => {
            let scope = scope.as_deref().or(default_scope);
            fetch_token(client, realm, service.as_deref(), scope, creds, timeout)
                .await
                .map_err(AuthError::Token)
        }
    }
}

/// `Basic base64(user:password)`.
pub fn basic(user: &str, pass: &Secret) -> Secret {
    let raw = format!("{user}:{}", pass.expose());
    Secret::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
}

async fn fetch_token(
    client: &reqwest::Client,
    realm: &str,
    service: Option<&str>,
    scope: Option<&str>,
    creds: Option<(&str, &Secret)>,
    timeout: Duration,
) -> Result<(Secret, Option<u64>), String> {
    let mut url = Url::parse(realm).map_err(|e| format!("bad realm: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("realm is not http(s)".into());
    }
    {
        let mut q = url.query_pairs_mut();
        if let Some(s) = service {
            q.append_pair("service", s);
        }
        if let Some(s) = scope {
            for one in s.split(' ').filter(|s| !s.is_empty()) {
                q.append_pair("scope", one);
            }
        }
    }
    let mut req = client.get(url).timeout(timeout);
    if let Some((user, pass)) = creds {
        req = req.header(header::AUTHORIZATION, basic(user, pass).expose());
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("token endpoint answered {}", resp.status()));
    }
    let body = read_limited(resp, TOKEN_BODY_LIMIT).await?;
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| format!("token JSON: {e}"))?;
    let token = v
        .get("token")
        .or_else(|| v.get("access_token"))
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or("no token in the answer")?;
    let expires_in = v.get("expires_in").and_then(|e| e.as_u64());
    Ok((Secret::new(format!("Bearer {token}")), expires_in))
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let (scheme, params) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Self::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_auth_params(params);
        let get = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        Some(Self::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        })
    }
}

/// `k="v", k2=v2` with quoted strings that may contain commas.
fn parse_auth_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(Challenge::parse("Basic realm=\"x\""), Some(Challenge::Basic));
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull,push".into()),
            })
        );
        assert_eq!(
            Challenge::parse("bearer realm=http://t/token"),
            Some(Challenge::Bearer {
                realm: "http://t/token".into(),
                service: None,
                scope: None
            })
        );
        assert_eq!(Challenge::parse("Bearer service=\"x\""), None);
        assert_eq!(Challenge::parse("Negotiate"), None);
        assert_eq!(Challenge::parse(""), None);
    }

    #[test]
    fn basic_header_is_a_secret() {
        let b = basic("alice", &Secret::new("secret"));
        assert_eq!(b.expose(), "Basic YWxpY2U6c2VjcmV0");
        assert_eq!(format!("{b:?}"), "<redacted>");
    }
}

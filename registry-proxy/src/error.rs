//! One error type for the proxy, and exactly one place ([`IntoResponse`])
//! where errors become HTTP: an OCI error JSON body with the right status.
//!
//! Each variant knows which side caused it ([`Side`]): the client (a bad
//! name, digest or range: never retried), the origin (down, refusing, or
//! sending bytes that do not match their digest: a retry or another source
//! may help) or the blob source.

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Origin,
    Source,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("invalid repository name: {0}")]
    NameInvalid(String),
    #[error("invalid digest: {0}")]
    DigestInvalid(String),
    /// A reference that is neither a digest nor a valid tag: no such
    /// manifest can exist, so 404 (the conformance suites expect it).
    #[error("manifest unknown (invalid tag {0})")]
    TagInvalid(String),
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("no such endpoint in the distribution API")]
    RouteUnknown,
    #[error("method not allowed: this is a pull-only mirror")]
    MethodNotAllowed,
    #[error("registry {0} is not served by this proxy")]
    RegistryNotAllowed(String),
    #[error("blob unknown to the origin: {0}")]
    BlobUnknown(String),
    #[error("range not satisfiable (blob is {total} bytes)")]
    RangeNotSatisfiable { total: u64 },
    /// The origin refused the client (401/403); its challenge and body go
    /// back to the client so that it can authenticate.
    #[error("origin refused the request with {status}")]
    Denied {
        status: StatusCode,
        challenge: Option<HeaderValue>,
        body: Bytes,
    },
    #[error("origin {registry} unavailable: {message}")]
    Upstream { registry: String, message: String },
    #[error("blob source failed: {0}")]
    Source(String),
}

impl ProxyError {
    pub fn side(&self) -> Side {
        match self {
            Self::Denied { .. } | Self::Upstream { .. } | Self::BlobUnknown(_) => Side::Origin,
            Self::Source(_) => Side::Source,
            _ => Side::Client,
        }
    }

    /// Whether trying again (later, or with another source) may help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Upstream { .. } | Self::Source(_))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::NameInvalid(_) | Self::DigestInvalid(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::RouteUnknown | Self::BlobUnknown(_) | Self::TagInvalid(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RegistryNotAllowed(_) => StatusCode::FORBIDDEN,
            Self::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::Denied { status, .. } => *status,
            Self::Upstream { .. } | Self::Source(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The OCI distribution-spec error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NameInvalid(_) => "NAME_INVALID",
            Self::TagInvalid(_) => "MANIFEST_UNKNOWN",
            Self::DigestInvalid(_) => "DIGEST_INVALID",
            Self::BadRequest(_) | Self::RouteUnknown | Self::MethodNotAllowed => "UNSUPPORTED",
            Self::BlobUnknown(_) => "BLOB_UNKNOWN",
            Self::RangeNotSatisfiable { .. } => "RANGE_INVALID",
            Self::Denied { status, .. } if *status == StatusCode::UNAUTHORIZED => "UNAUTHORIZED",
            Self::Denied { .. } | Self::RegistryNotAllowed(_) => "DENIED",
            Self::Upstream { .. } | Self::Source(_) => "UNAVAILABLE",
        }
    }
}

/// Why a proxy could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] damselfly_service::config::ConfigError),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// `{"errors":[{"code":..,"message":..}]}`
pub fn oci_error_body(code: &str, message: &str) -> String {
    serde_json::json!({ "errors": [{ "code": code, "message": message, "detail": null }] }).to_string()
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut builder = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .header("docker-distribution-api-version", "registry/2.0");
        let body = match self {
            Self::Denied { challenge, body, .. } => {
                if let Some(c) = challenge {
                    builder = builder.header(header::WWW_AUTHENTICATE, c);
                }
                if body.is_empty() || serde_json::from_slice::<serde_json::Value>(&body).is_err() {
                    let code = if status == StatusCode::UNAUTHORIZED {
                        "UNAUTHORIZED"
                    } else {
                        "DENIED"
                    };
                    Bytes::from(oci_error_body(code, "access to the resource is denied"))
                } else {
                    body
                }
            }
            Self::RangeNotSatisfiable { total } => {
                builder = builder.header(header::CONTENT_RANGE, format!("bytes */{total}"));
                Bytes::from(oci_error_body(self.code(), &self.to_string()))
            }
            other => Bytes::from(oci_error_body(other.code(), &other.to_string())),
        };
        builder
            .body(axum::body::Body::from(body))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes() {
        let e = ProxyError::DigestInvalid("x".into());
        assert_eq!(
            (e.status(), e.code(), e.side()),
            (StatusCode::BAD_REQUEST, "DIGEST_INVALID", Side::Client)
        );
        let e = ProxyError::Upstream {
            registry: "r".into(),
            message: "down".into(),
        };
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert!(e.is_retryable());
        assert!(!ProxyError::NameInvalid("x".into()).is_retryable());
        let v: serde_json::Value = serde_json::from_str(&oci_error_body("BLOB_UNKNOWN", "m")).unwrap();
        assert_eq!(v["errors"][0]["code"], "BLOB_UNKNOWN");
    }
}

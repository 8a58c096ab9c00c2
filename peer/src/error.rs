//! The peer's one error type.
//!
//! Each variant says where the trouble came from, because that decides what
//! the download engine does next: a parent's fault means "try another
//! parent", an origin's fault means "retry, then fail", a local fault
//! (disk full, bad request) fails the download at once.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("origin: {0}")]
    Origin(String),
    #[error("origin answered HTTP {status} for {url}")]
    OriginStatus { status: u16, url: String },
    #[error("content digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("parent {parent}: {message}")]
    Parent { parent: String, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(String),
    #[error("config: {0}")]
    Config(#[from] damselfly_service::config::ConfigError),
    #[error("download failed: {0}")]
    Failed(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// May another attempt (another parent, a retry) help?
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Origin(_) | Error::Parent { .. } => true,
            Error::OriginStatus { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            _ => false,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::BadRequest(_) => tonic::Status::invalid_argument(msg),
            Error::Forbidden(_) => tonic::Status::permission_denied(msg),
            Error::OriginStatus { status: 404, .. } => tonic::Status::not_found(msg),
            Error::OriginStatus {
                status: 401 | 403, ..
            } => tonic::Status::permission_denied(msg),
            Error::DigestMismatch { .. } => tonic::Status::data_loss(msg),
            Error::Origin(_) | Error::OriginStatus { .. } => tonic::Status::unavailable(msg),
            _ => tonic::Status::internal(msg),
        }
    }
}

macro_rules! store_err {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self { Error::Store(e.to_string()) }
        }
    )*};
}
store_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    serde_json::Error
);

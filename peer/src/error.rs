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
    /// The origin states another length than the one the task was laid out for.
    #[error("the origin has {actual} bytes, the task expects {expected}")]
    LengthMismatch { expected: u64, actual: u64 },
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
    /// A lasting refusal by an object store (no such key, access denied),
    /// already one line naming what is wrong.
    #[error("{message}")]
    Refused { kind: FailKind, message: String },
    /// A download that failed elsewhere (the task's own run), with its kind.
    #[error("{0}")]
    Ended(Failure),
}

/// What a failed download's waiters are told: its kind survives the task
/// boundary, so an origin's 404 reaches `damselfly get` as not-found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    InvalidArgument,
    NotFound,
    PermissionDenied,
    DataLoss,
    Unavailable,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailKind,
    pub message: String,
}

impl Failure {
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            kind: FailKind::Internal,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<Failure> for tonic::Status {
    fn from(f: Failure) -> Self {
        let code = match f.kind {
            FailKind::InvalidArgument => tonic::Code::InvalidArgument,
            FailKind::NotFound => tonic::Code::NotFound,
            FailKind::PermissionDenied => tonic::Code::PermissionDenied,
            FailKind::DataLoss => tonic::Code::DataLoss,
            FailKind::Unavailable => tonic::Code::Unavailable,
            FailKind::Internal => tonic::Code::Internal,
        };
        tonic::Status::new(code, f.message)
    }
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

impl Error {
    /// The error as the task keeps it for its waiters.
    pub fn failure(&self) -> Failure {
        let kind = match self {
            Error::Ended(f) => return f.clone(),
            Error::Refused { kind, .. } => *kind,
            Error::BadRequest(_) => FailKind::InvalidArgument,
            Error::Forbidden(_) => FailKind::PermissionDenied,
            Error::OriginStatus { status: 404, .. } => FailKind::NotFound,
            Error::OriginStatus {
                status: 401 | 403, ..
            } => FailKind::PermissionDenied,
            Error::DigestMismatch { .. } | Error::LengthMismatch { .. } => FailKind::DataLoss,
            Error::Origin(_) | Error::OriginStatus { .. } => FailKind::Unavailable,
            _ => FailKind::Internal,
        };
        Failure {
            kind,
            message: self.to_string(),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        e.failure().into()
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

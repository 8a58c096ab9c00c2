//! One error type for the whole manager, and exactly two conversions out of
//! it: [`Error`] -> HTTP response (in `api`) and [`Error`] -> `tonic::Status`
//! (here). Each variant is a thing a caller can act on: fix the named field,
//! stop asking for that id, sign in, ask an admin, or retry later.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: names the offending field (HTTP 400).
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{0}")]
    Conflict(String),
    /// No or wrong credentials (HTTP 401).
    #[error("authentication required")]
    Unauthenticated,
    /// Authenticated, but the scope does not allow this (HTTP 403).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The database could not be reached; retrying later may help (HTTP 503).
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("{context}: {message}")]
    Upstream { context: String, message: String },
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound { what: what.into() }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => Error::not_found("row"),
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                Error::Conflict("an object with this name already exists".into())
            }
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                Error::Conflict("the object is referenced by, or refers to, another object".into())
            }
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => Error::Unavailable(e),
            _ => Error::Database(e),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::Invalid { .. } => tonic::Status::invalid_argument(msg),
            Error::NotFound { .. } => tonic::Status::not_found(msg),
            Error::Conflict(_) => tonic::Status::already_exists(msg),
            Error::Unauthenticated => tonic::Status::unauthenticated(msg),
            Error::Forbidden(_) => tonic::Status::permission_denied(msg),
            Error::Unavailable(_) => tonic::Status::unavailable(msg),
            Error::Upstream { .. } => tonic::Status::unavailable(msg),
            Error::Database(_) | Error::Internal(_) => tonic::Status::internal(msg),
        }
    }
}

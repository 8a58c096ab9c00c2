//! The scheduler's one error type, converted to `tonic::Status` in one place.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("permission denied: {0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("unknown host {0}: announce the host first")]
    UnknownHost(String),
    #[error("config: {0}")]
    Config(#[from] damselfly_service::config::ConfigError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Ticket(#[from] damselfly_service::ticket::TicketError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A server task ended while the scheduler was not stopping.
    #[error(transparent)]
    TaskEnded(#[from] damselfly_service::tasks::TaskEnded),
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match e {
            Error::BadRequest(m) => tonic::Status::invalid_argument(m),
            Error::Forbidden(m) => tonic::Status::permission_denied(m),
            Error::NotFound(m) => tonic::Status::not_found(m),
            Error::Conflict(m) => tonic::Status::already_exists(m),
            Error::UnknownHost(_) => tonic::Status::failed_precondition(e.to_string()),
            other => tonic::Status::internal(other.to_string()),
        }
    }
}

//! Error kinds shared by the services and their one mapping to gRPC status codes.

/// What went wrong, independent of the crate that noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request or configuration is invalid.
    InvalidArgument,
    /// The request is valid but the service is not in a state to serve it.
    FailedPrecondition,
    /// Something requested does not exist.
    NotFound,
    /// A deadline passed.
    Timeout,
    /// A peer could not be reached.
    Unavailable,
    /// A stale or fenced-off request (old epoch, expired lease).
    Aborted,
    /// A bug or an unexpected failure.
    Internal,
}

impl ErrorKind {
    /// The gRPC status code for this kind.
    pub fn code(self) -> tonic::Code {
        match self {
            ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorKind::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::Timeout => tonic::Code::DeadlineExceeded,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::Aborted => tonic::Code::Aborted,
            ErrorKind::Internal => tonic::Code::Internal,
        }
    }

    /// The kind for a gRPC status code received from a peer.
    pub fn from_code(code: tonic::Code) -> Self {
        match code {
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => ErrorKind::InvalidArgument,
            tonic::Code::FailedPrecondition => ErrorKind::FailedPrecondition,
            tonic::Code::NotFound => ErrorKind::NotFound,
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => ErrorKind::Timeout,
            tonic::Code::Unavailable => ErrorKind::Unavailable,
            tonic::Code::Aborted => ErrorKind::Aborted,
            _ => ErrorKind::Internal,
        }
    }

    /// Whether retrying the same request elsewhere or later can help.
    pub fn retryable(self) -> bool {
        matches!(self, ErrorKind::Timeout | ErrorKind::Unavailable)
    }
}

/// A gRPC status with this kind's code.
pub fn status(kind: ErrorKind, message: impl Into<String>) -> tonic::Status {
    tonic::Status::new(kind.code(), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for k in [
            ErrorKind::InvalidArgument,
            ErrorKind::FailedPrecondition,
            ErrorKind::NotFound,
            ErrorKind::Timeout,
            ErrorKind::Unavailable,
            ErrorKind::Aborted,
            ErrorKind::Internal,
        ] {
            assert_eq!(ErrorKind::from_code(k.code()), k);
        }
        assert!(ErrorKind::Unavailable.retryable());
        assert!(!ErrorKind::InvalidArgument.retryable());
    }
}

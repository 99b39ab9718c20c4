//! Errors: each names the URL it is about.

use std::fmt;
use std::io;
use std::time::Duration;

/// A failure reading a remote object.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The location is not one this crate reads.
    Location {
        /// As given.
        location: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A setting from the environment or a configuration file is wrong.
    Setting {
        /// The variable or file entry.
        name: String,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The server answered with a status that is not retried (or was
    /// retried until the time allowed ran out).
    Status {
        /// The URL asked.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the body the server sent with it (S3 says why there).
        body: String,
    },
    /// The object is no longer the version opened: another ETag,
    /// Last-Modified or size, or a failed `If-Match`.
    Changed {
        /// The URL asked.
        url: String,
        /// What differs.
        what: &'static str,
    },
    /// The server's answer does not fit the request (a range other than
    /// asked, a length other than announced, no range support).
    BadResponse {
        /// The URL asked.
        url: String,
        /// What is wrong with it.
        what: String,
    },
    /// The request did not complete: connecting, a dropped connection, a
    /// stall past the read timeout.
    Transport {
        /// The URL asked.
        url: String,
        /// The client's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A local copy could not be written or read ([`crate::Cache`]).
    Cache {
        /// The file in the cache.
        path: std::path::PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Transient failures went on past the time allowed for retries.
    GaveUp {
        /// The URL asked.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        after: Duration,
        /// The last failure.
        last: Box<Error>,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Location { location, reason } => write!(f, "{location}: {reason}"),
            Error::Setting {
                name,
                value,
                reason,
            } => write!(f, "{name}={value:?}: {reason}"),
            Error::Status { url, status, body } => {
                write!(f, "{url}: HTTP status {status}")?;
                if !body.is_empty() {
                    write!(f, " ({body})")?;
                }
                Ok(())
            }
            Error::Changed { url, what } => write!(
                f,
                "{url}: the object changed since it was opened ({what}); not mixing two versions"
            ),
            Error::BadResponse { url, what } => write!(f, "{url}: {what}"),
            Error::Transport { url, .. } => write!(f, "{url}: request failed"),
            Error::Cache { path, .. } => {
                write!(f, "{}: keeping a local copy failed", path.display())
            }
            Error::GaveUp {
                url,
                attempts,
                after,
                ..
            } => write!(
                f,
                "{url}: gave up after {attempts} attempts in {:.1} s",
                after.as_secs_f64()
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Transport { source, .. } => Some(&**source),
            Error::Cache { source, .. } => Some(source),
            Error::GaveUp { last, .. } => Some(&**last),
            _ => None,
        }
    }
}

impl Error {
    /// Whether trying again may succeed: throttling, server errors, and
    /// requests that did not complete.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Status { status, .. } => {
                matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
            }
            Error::Transport { .. } => true,
            _ => false,
        }
    }

    /// The HTTP status behind it, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Status { status, .. } => Some(*status),
            Error::GaveUp { last, .. } => last.status(),
            _ => None,
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match &e {
            Error::Status { status: 404, .. } => io::ErrorKind::NotFound,
            Error::Status {
                status: 401 | 403, ..
            } => io::ErrorKind::PermissionDenied,
            Error::Location { .. } | Error::Setting { .. } => io::ErrorKind::InvalidInput,
            Error::GaveUp { .. } => io::ErrorKind::TimedOut,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

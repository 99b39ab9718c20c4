//! Where an object is: `s3://bucket/key` or an `http(s)://` URL.

use std::path::{Path, PathBuf};

use crate::Error;

/// A remote location, as a user writes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    /// An object (or a prefix) in an S3-compatible store.
    S3 {
        /// The bucket.
        bucket: String,
        /// The key, without a leading `/`; empty for the whole bucket.
        key: String,
    },
    /// A URL served over HTTP or HTTPS.
    Http(String),
}

/// Whether `s` names a remote location (`s3://`, `http://`, `https://`).
pub fn is_remote(s: &str) -> bool {
    // Bytes, not `&s[..n]`: a local path's n-th byte may fall inside a
    // character (`模型/model.safetensors`), where slicing the `str` panics.
    let lower = |p: &str| {
        s.as_bytes()
            .get(..p.len())
            .is_some_and(|b| b.eq_ignore_ascii_case(p.as_bytes()))
    };
    lower("s3://") || lower("http://") || lower("https://")
}

/// Whether `path` names a remote location.
pub fn is_remote_path(path: &Path) -> bool {
    path.to_str().is_some_and(is_remote)
}

impl Location {
    /// Parse `s3://bucket/key`, `http://...` or `https://...`.
    pub fn parse(s: &str) -> Result<Location, Error> {
        let bad = |reason| Error::Location {
            location: s.to_owned(),
            reason,
        };
        if s.len() > 5 && s.as_bytes()[..5].eq_ignore_ascii_case(b"s3://") {
            // "s3://" is ASCII, so byte 5 starts a character.
            let rest = &s[5..];
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket"));
            }
            if !bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            {
                return Err(bad(
                    "a bucket name has letters, digits, '-', '.' and '_' only",
                ));
            }
            if s.contains('?') || s.contains('#') {
                return Err(bad("an s3:// location has no query or fragment"));
            }
            return Ok(Location::S3 {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
            });
        }
        if is_remote(s) {
            let after = s.split_once("://").map(|x| x.1).unwrap_or("");
            if after.is_empty() || after.starts_with('/') {
                return Err(bad("no host"));
            }
            if s.contains('#') {
                return Err(bad("a URL to read has no fragment"));
            }
            if s.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                return Err(bad("spaces and control characters must be percent-encoded"));
            }
            return Ok(Location::Http(s.to_owned()));
        }
        Err(bad("not an s3://, http:// or https:// location"))
    }

    /// Parse a path that holds a location (as checkpoints name shards).
    pub fn from_path(path: &Path) -> Result<Location, Error> {
        match path.to_str() {
            Some(s) => Location::parse(s),
            None => Err(Error::Location {
                location: path.display().to_string(),
                reason: "not UTF-8",
            }),
        }
    }

    /// The location as a path, the way checkpoints name their shards.
    pub fn to_path(&self) -> PathBuf {
        PathBuf::from(self.to_string())
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
            Location::Http(url) => f.write_str(url),
        }
    }
}

/// Percent-encode `s` as SigV4 and S3 want a path: every byte but
/// unreserved ones (and `/` where `keep_slash`).
pub(crate) fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_locations() {
        assert_eq!(
            Location::parse("s3://b/a/model.safetensors").unwrap(),
            Location::S3 {
                bucket: "b".into(),
                key: "a/model.safetensors".into()
            }
        );
        assert_eq!(
            Location::parse("s3://b").unwrap(),
            Location::S3 {
                bucket: "b".into(),
                key: "".into()
            }
        );
        assert!(Location::parse("s3:///k").is_err());
        assert!(Location::parse("s3://b?x/k").is_err());
        assert!(Location::parse("http://").is_err());
        assert!(Location::parse("http://h/a b").is_err());
        assert!(Location::parse("/tmp/x").is_err());
        assert!(matches!(
            Location::parse("HTTPS://h/x").unwrap(),
            Location::Http(_)
        ));
        // Shards of an index resolve beside it, URL and all.
        let p = Location::parse("http://127.0.0.1:9/m/x.safetensors.index.json")
            .unwrap()
            .to_path();
        let shard = p.parent().unwrap().join("a.safetensors");
        assert_eq!(
            shard.to_str().unwrap(),
            "http://127.0.0.1:9/m/a.safetensors"
        );
    }

    #[test]
    fn encodes_uris() {
        assert_eq!(uri_encode("a b/c~d*", true), "a%20b/c~d%2A");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
    }
}

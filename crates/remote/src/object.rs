//! An object opened at one version, read by ranges.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{Client, FIRST_RANGE, Reply, Version};
use crate::{Error, Limits, Location};

/// One object, its version taken at open; every later range must be of
/// that version (`If-Match` on its ETag, and the response's ETag, size and
/// `Last-Modified` checked), or the read fails with [`Error::Changed`].
#[derive(Debug)]
pub struct Object {
    client: Arc<Client>,
    location: Location,
    path: PathBuf,
    version: Version,
    /// The bytes the opening request brought: the first [`FIRST_RANGE`].
    prefix: Vec<u8>,
}

impl Object {
    /// Open `location` through `client`: one ranged GET of its first
    /// [`FIRST_RANGE`] bytes, which gives its size and version too.
    pub fn open(client: Arc<Client>, location: Location) -> Result<Object, Error> {
        let url = location.to_string();
        let (version, prefix) = client.retrying(&|| url.clone(), || {
            let mut r = client.request(
                &location,
                &[],
                &[("range", format!("bytes=0-{}", FIRST_RANGE - 1))],
            )?;
            let size = match r.status {
                206 => {
                    let (start, _, total) = content_range(&url, r.content_range.as_deref())?;
                    if start != 0 {
                        return Err(bad(&url, "answered a range from 0 with another range"));
                    }
                    total
                }
                200 => match r.content_length {
                    Some(n) if n <= FIRST_RANGE => n,
                    _ => {
                        return Err(bad(
                            &url,
                            "ignores Range requests (answered 200 with the whole object)",
                        ));
                    }
                },
                // Any byte of a range from 0 exists unless the object is
                // empty: servers answer 416, with `Content-Range: bytes
                // */0` (HTTP) or without it (S3).
                416 => match r.content_range.as_deref().map(str::trim) {
                    None | Some("bytes */0") => 0,
                    Some(other) => {
                        return Err(bad(
                            &url,
                            &format!("refused a range from 0 with a Content-Range of {other:?}"),
                        ));
                    }
                },
                s => {
                    return Err(Error::Status {
                        url: url.clone(),
                        status: s,
                        body: String::new(),
                    });
                }
            };
            let want = size.min(FIRST_RANGE) as usize;
            let mut prefix = vec![0u8; want];
            if r.status != 416 {
                // (A 416's body is the server's explanation, not the object.)
                read_body(&url, &mut r, &mut prefix, client.limits())?;
            }
            let version = Version {
                size,
                etag: r.etag.clone(),
                last_modified: r.last_modified.clone(),
            };
            Ok((version, prefix))
        })?;
        if version.etag.is_none() && version.last_modified.is_none() {
            log::warn!(
                target: "weightlift",
                "{url}: the server gives neither an ETag nor a Last-Modified date; only its size can show a replaced object"
            );
        }
        Ok(Object {
            path: location.to_path(),
            client,
            location,
            version,
            prefix,
        })
    }

    /// The location, as a path (how checkpoints name it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The location.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The version opened.
    pub fn version(&self) -> &Version {
        &self.version
    }

    /// Its size at open.
    pub fn size(&self) -> u64 {
        self.version.size
    }

    /// The URL its requests go to (for S3, through the endpoint in force).
    pub(crate) fn request_url(&self) -> String {
        self.client.resolved(&self.location)
    }

    /// Read into `buf` from `offset`: all of it, or fewer bytes only where
    /// the object ends. Transient failures are retried within the client's
    /// limits.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, Error> {
        let size = self.version.size;
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(size - offset) as usize;
        let buf = &mut buf[..len];
        let end = offset + len as u64;
        if end <= self.prefix.len() as u64 {
            buf.copy_from_slice(&self.prefix[offset as usize..end as usize]);
            return Ok(len);
        }
        let url = self.location.to_string();
        self.client
            .retrying(&|| url.clone(), || self.fetch(&url, buf, offset))?;
        Ok(len)
    }

    fn fetch(&self, url: &str, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        let len = buf.len() as u64;
        let last = offset + len - 1;
        let mut headers = vec![("range", format!("bytes={offset}-{last}"))];
        match (&self.version.etag, &self.version.last_modified) {
            (Some(e), _) if !e.starts_with("W/") => headers.push(("if-match", e.clone())),
            (_, Some(m)) => headers.push(("if-unmodified-since", m.clone())),
            _ => {}
        }
        let mut r = self.client.request(&self.location, &[], &headers)?;
        let changed = |what| Error::Changed {
            url: url.to_owned(),
            what,
        };
        if r.status == 412 {
            return Err(changed("the server refused the version opened (412)"));
        }
        if r.etag.is_some() && self.version.etag.is_some() && r.etag != self.version.etag {
            return Err(changed("ETag"));
        }
        if r.last_modified.is_some()
            && self.version.last_modified.is_some()
            && r.last_modified != self.version.last_modified
        {
            return Err(changed("Last-Modified"));
        }
        match r.status {
            206 => {
                let (start, end, total) = content_range(url, r.content_range.as_deref())?;
                if total != self.version.size {
                    return Err(changed("size"));
                }
                if (start, end) != (offset, last) {
                    return Err(bad(
                        url,
                        &format!("asked bytes {offset}-{last}, the server sent {start}-{end}"),
                    ));
                }
            }
            200 => {
                if r.content_length.is_some_and(|n| n != self.version.size) {
                    return Err(changed("size"));
                }
                if offset != 0 || len != self.version.size {
                    return Err(bad(
                        url,
                        "ignores Range requests (answered 200 with the whole object)",
                    ));
                }
            }
            s => {
                return Err(Error::Status {
                    url: url.to_owned(),
                    status: s,
                    body: String::new(),
                });
            }
        }
        read_body(url, &mut r, buf, self.client.limits())
    }
}

/// The slowest a body may arrive, on average: a server trickling bytes
/// (each read within the stall timeout, the whole never done) is cut off
/// once a body has taken the stall timeout plus its length at this rate.
const SLOWEST_BYTES_PER_SEC: f64 = (1 << 20) as f64;

/// Fill `buf` from the body, which must hold exactly that many bytes,
/// within the stall timeout of `limits` plus its length at
/// [`SLOWEST_BYTES_PER_SEC`] (a dropped connection, retried, after that).
fn read_body(url: &str, r: &mut Reply, buf: &mut [u8], limits: &Limits) -> Result<(), Error> {
    let start = Instant::now();
    let allowed =
        limits.read_timeout + Duration::from_secs_f64(buf.len() as f64 / SLOWEST_BYTES_PER_SEC);
    if let Some(n) = r.content_length
        && n != buf.len() as u64
    {
        return Err(bad(
            url,
            &format!(
                "the server announced {n} bytes for a range of {}",
                buf.len()
            ),
        ));
    }
    let mut at = 0;
    while at < buf.len() {
        match r.body.read(&mut buf[at..]) {
            Ok(0) => {
                // The connection ended early: a dropped connection, or a
                // server that announced more than it sent. Retried.
                return Err(Error::Transport {
                    url: url.to_owned(),
                    source: format!("the body ended after {at} of {} bytes", buf.len()).into(),
                });
            }
            Ok(n) => {
                at += n;
                if at < buf.len() && start.elapsed() > allowed {
                    return Err(Error::Transport {
                        url: url.to_owned(),
                        source: format!(
                            "{at} of {} bytes in {:.0?}: slower than {} KiB/s, cut off",
                            buf.len(),
                            start.elapsed(),
                            SLOWEST_BYTES_PER_SEC as u64 >> 10
                        )
                        .into(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(Error::Transport {
                    url: url.to_owned(),
                    source: Box::new(e),
                });
            }
        }
    }
    if r.content_length.is_none() {
        // Without a length, the body must end here.
        let mut one = [0u8; 1];
        if matches!(r.body.read(&mut one), Ok(n) if n > 0) {
            return Err(bad(url, "the server sent more bytes than the range asked"));
        }
    }
    Ok(())
}

fn bad(url: &str, what: &str) -> Error {
    Error::BadResponse {
        url: url.to_owned(),
        what: what.to_owned(),
    }
}

/// `bytes START-END/TOTAL`.
fn content_range(url: &str, v: Option<&str>) -> Result<(u64, u64, u64), Error> {
    let parse = |v: &str| -> Option<(u64, u64, u64)> {
        let v = v.trim().strip_prefix("bytes ")?;
        let (range, total) = v.split_once('/')?;
        let (a, b) = range.split_once('-')?;
        let (a, b, t) = (
            a.trim().parse().ok()?,
            b.trim().parse().ok()?,
            total.trim().parse().ok()?,
        );
        (a <= b && b < t).then_some((a, b, t))
    };
    v.and_then(parse).ok_or_else(|| {
        bad(
            url,
            &format!("a partial answer with a Content-Range of {v:?}, not bytes START-END/TOTAL"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(
            content_range("u", Some("bytes 0-9/10")).unwrap(),
            (0, 9, 10)
        );
        assert!(content_range("u", Some("bytes 0-10/10")).is_err());
        assert!(content_range("u", Some("bytes */10")).is_err());
        assert!(content_range("u", None).is_err());
    }
}

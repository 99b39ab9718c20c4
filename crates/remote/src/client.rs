//! The client: one connection pool, S3 signing where it applies, and every
//! request bounded in time and retried when the failure is transient.

use std::io::Read;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use crate::Error;
use crate::config::{Limits, S3Config};
use crate::location::{Location, uri_encode};
use crate::sigv4::{self, EMPTY_SHA256};

/// Bytes asked for when an object is opened: enough for most headers,
/// which a second range completes when they are longer.
pub const FIRST_RANGE: u64 = 64 << 10;

/// A client for S3-compatible stores and HTTP servers, shared by every
/// object opened through it and by the threads reading them.
pub struct Client {
    agent: ureq::Agent,
    limits: Limits,
    s3: OnceLock<Result<S3Config, String>>,
    s3_given: Option<S3Config>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// The version of an object its reads must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Its size in bytes.
    pub size: u64,
    /// Its ETag, as the server sends it (quotes included).
    pub etag: Option<String>,
    /// Its `Last-Modified` date, as the server sends it.
    pub last_modified: Option<String>,
}

/// A response's status, the headers that matter, and its body.
pub(crate) struct Reply {
    pub status: u16,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub content_range: Option<String>,
    pub content_length: Option<u64>,
    pub body: ureq::BodyReader<'static>,
}

impl Client {
    /// A client with these limits; S3 settings are read from the standard
    /// chain ([`S3Config::from_env`]) when an `s3://` location is first used.
    pub fn new(limits: Limits) -> Client {
        Self::build(limits, None)
    }

    /// A client with these limits and S3 settings.
    pub fn with_s3(limits: Limits, s3: S3Config) -> Client {
        Self::build(limits, Some(s3))
    }

    fn build(limits: Limits, s3_given: Option<S3Config>) -> Client {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(limits.connect_timeout))
            .timeout_resolve(Some(limits.connect_timeout))
            .timeout_send_request(Some(limits.read_timeout))
            .timeout_recv_response(Some(limits.read_timeout))
            .timeout_per_read(Some(limits.read_timeout))
            .max_idle_connections(256)
            .max_idle_connections_per_host(128)
            .build();
        Client {
            agent: ureq::Agent::new_with_config(config),
            limits,
            s3: OnceLock::new(),
            s3_given,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn s3(&self) -> Result<&S3Config, Error> {
        if let Some(c) = &self.s3_given {
            return Ok(c);
        }
        // Read once; a bad setting is reported on every use.
        match self
            .s3
            .get_or_init(|| S3Config::from_env().map_err(|e| e.to_string()))
        {
            Ok(c) => Ok(c),
            Err(e) => Err(Error::Setting {
                name: "S3 settings".into(),
                value: e.clone(),
                reason: "could not be read",
            }),
        }
    }

    /// The URL a request for `loc` goes to: for S3, with the endpoint and
    /// addressing style in force (`loc` itself where they cannot be read).
    pub(crate) fn resolved(&self, loc: &Location) -> String {
        self.target(loc)
            .map_or_else(|_| loc.to_string(), |(url, _)| url)
    }

    /// The URL, host and URI-encoded path of a request for `loc`.
    fn target(&self, loc: &Location) -> Result<(String, Option<(String, String)>), Error> {
        match loc {
            Location::Http(url) => Ok((url.clone(), None)),
            Location::S3 { bucket, key } => {
                let c = self.s3()?;
                let key = uri_encode(key, true);
                let (scheme, host) = match &c.endpoint {
                    Some(e) => {
                        let (s, h) = e.split_once("://").unwrap_or(("https", e));
                        (s.to_owned(), h.to_owned())
                    }
                    None => ("https".to_owned(), format!("s3.{}.amazonaws.com", c.region)),
                };
                let (host, path) = if c.path_style || bucket.contains('.') {
                    (host, format!("/{bucket}/{key}"))
                } else {
                    (format!("{bucket}.{host}"), format!("/{key}"))
                };
                Ok((format!("{scheme}://{host}{path}"), Some((host, path))))
            }
        }
    }

    /// One request, no retry. `query` is URI-encoded already.
    pub(crate) fn request(
        &self,
        loc: &Location,
        query: &[(String, String)],
        headers: &[(&str, String)],
    ) -> Result<Reply, Error> {
        let (mut url, signing) = self.target(loc)?;
        let display = loc.to_string();
        if !query.is_empty() {
            let q: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            url = format!("{url}?{}", q.join("&"));
        }
        let mut req = self.agent.get(&url);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let (Some((host, path)), Ok(c)) = (signing, self.s3())
            && let Some(creds) = &c.credentials
        {
            let date = sigv4::amz_date(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            );
            let mut signed: Vec<(String, String)> = vec![
                ("host".into(), host),
                ("x-amz-content-sha256".into(), EMPTY_SHA256.into()),
                ("x-amz-date".into(), date.clone()),
            ];
            if let Some(t) = &creds.session_token {
                signed.push(("x-amz-security-token".into(), t.clone()));
            }
            for (k, v) in headers {
                signed.push((k.to_ascii_lowercase(), v.clone()));
            }
            let auth = sigv4::authorization(
                creds,
                &sigv4::Request {
                    method: "GET",
                    path: &path,
                    query,
                    headers: &signed,
                    payload_hash: EMPTY_SHA256,
                },
                &date,
                &c.region,
                "s3",
            );
            for (k, v) in &signed[1..] {
                if !headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(k)) {
                    req = req.header(k.as_str(), v);
                }
            }
            req = req.header("authorization", auth);
        }
        let resp = req.call().map_err(|e| Error::Transport {
            url: display.clone(),
            source: Box::new(e),
        })?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let etag = header("etag");
        let last_modified = header("last-modified");
        let content_range = header("content-range");
        let content_length = header("content-length").and_then(|v| v.trim().parse().ok());
        let body = resp.into_body().into_reader();
        let mut reply = Reply {
            status,
            etag,
            last_modified,
            content_range,
            content_length,
            body,
        };
        // 412 and 416 (a range past the end; its `Content-Range` gives the
        // size) are the caller's to read.
        if !(200..300).contains(&status) && !matches!(status, 304 | 412 | 416) {
            // The start of the body says why (S3's `<Code>`); bounded.
            let mut text = Vec::new();
            let _ = (&mut reply.body).take(512).read_to_end(&mut text);
            let text = String::from_utf8_lossy(&text);
            let body = match (text.find("<Code>"), text.find("</Code>")) {
                (Some(a), Some(b)) if a + 6 <= b => text[a + 6..b].to_owned(),
                _ => text.chars().filter(|c| !c.is_control()).take(200).collect(),
            };
            return Err(Error::Status {
                url: display,
                status,
                body,
            });
        }
        Ok(reply)
    }

    /// Run `attempt` until it succeeds, fails for good, or the retry
    /// bounds run out (then [`Error::GaveUp`] with the last failure).
    pub(crate) fn retrying<T>(
        &self,
        url: &dyn Fn() -> String,
        mut attempt: impl FnMut() -> Result<T, Error>,
    ) -> Result<T, Error> {
        let start = Instant::now();
        let mut backoff = self.limits.backoff;
        let mut n = 0u32;
        loop {
            n += 1;
            let e = match attempt() {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if !e.is_transient() {
                return Err(e);
            }
            let wait = jitter(backoff);
            if n >= self.limits.attempts || start.elapsed() + wait > self.limits.retry_for {
                return Err(Error::GaveUp {
                    url: url(),
                    attempts: n,
                    after: start.elapsed(),
                    last: Box::new(e),
                });
            }
            log::debug!(target: "weightlift", "retrying in {wait:?}: {e}");
            std::thread::sleep(wait);
            backoff = (backoff * 2).min(Limits::MAX_BACKOFF);
        }
    }
}

/// Between half and all of `d`, so that many readers throttled together
/// do not come back together.
fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let mut x = u64::from(nanos) ^ (std::thread::current().id().as_u64_fallback());
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    d / 2 + d.mul_f64((x % 1000) as f64 / 2000.0)
}

/// A stable number for the current thread, from its id's text.
trait ThreadNumber {
    fn as_u64_fallback(&self) -> u64;
}

impl ThreadNumber for std::thread::ThreadId {
    fn as_u64_fallback(&self) -> u64 {
        format!("{self:?}")
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            })
    }
}

/// Shared ownership of a client.
pub type SharedClient = Arc<Client>;

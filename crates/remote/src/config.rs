//! Settings of the client: S3 credentials, region and endpoint from the
//! standard chain, and the timeouts and retry bounds.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::Error;

/// S3 access keys.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_key: String,
    /// `AWS_SESSION_TOKEN`, for temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret.
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

/// Where and how S3 requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// The region requests are signed for.
    pub region: String,
    /// The endpoint (`scheme://host[:port]`), or `None` for AWS's own.
    pub endpoint: Option<String>,
    /// Address buckets as `endpoint/bucket/key` rather than
    /// `bucket.endpoint/key`: the default with a custom endpoint, which
    /// S3-compatible stores (MinIO, Ceph, moto) expect.
    pub path_style: bool,
    /// `None`: anonymous, unsigned requests (public buckets).
    pub credentials: Option<Credentials>,
}

impl S3Config {
    /// The standard chain, as the AWS CLI reads it: the environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
    /// `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL_S3`/
    /// `AWS_ENDPOINT_URL`), then the profile `AWS_PROFILE` (else
    /// `default`) of `~/.aws/credentials` and `~/.aws/config` (or
    /// `AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`). With no keys
    /// found, or `AWS_NO_SIGN_REQUEST=true`, requests are anonymous.
    /// `AWS_S3_ADDRESSING_STYLE` (`path` or `virtual`) overrides the
    /// addressing. Instance metadata, SSO and assumed roles are not read.
    pub fn from_env() -> Result<S3Config, Error> {
        Self::from_vars(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// [`S3Config::from_env`] with the environment given by `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<S3Config, Error> {
        let home = var("HOME").map(PathBuf::from);
        let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".into());
        let read = |explicit: &str, default: &str| -> HashMap<String, String> {
            let path = var(explicit)
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)));
            match path.and_then(|p| std::fs::read_to_string(p).ok()) {
                Some(text) => ini_section(&text, &profile, default == "config"),
                None => HashMap::new(),
            }
        };
        let creds_file = read("AWS_SHARED_CREDENTIALS_FILE", "credentials");
        let config_file = read("AWS_CONFIG_FILE", "config");
        let file = |k: &str| creds_file.get(k).or_else(|| config_file.get(k)).cloned();
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .or_else(|| file("region"))
            .unwrap_or_else(|| "us-east-1".into());
        let endpoint = var("AWS_ENDPOINT_URL_S3")
            .or_else(|| var("AWS_ENDPOINT_URL"))
            .or_else(|| file("endpoint_url"))
            .map(|e| e.trim_end_matches('/').to_owned());
        if let Some(e) = &endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(Error::Setting {
                name: "AWS_ENDPOINT_URL".into(),
                value: e.clone(),
                reason: "must begin with http:// or https://",
            });
        }
        let path_style = match var("AWS_S3_ADDRESSING_STYLE").as_deref() {
            Some("path") => true,
            Some("virtual") => false,
            Some("auto") | None => endpoint.is_some(),
            Some(other) => {
                return Err(Error::Setting {
                    name: "AWS_S3_ADDRESSING_STYLE".into(),
                    value: other.into(),
                    reason: "must be path, virtual or auto",
                });
            }
        };
        let anonymous = var("AWS_NO_SIGN_REQUEST").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let credentials = match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(access_key), Some(secret_key)) => Some(Credentials {
                access_key,
                secret_key,
                session_token: var("AWS_SESSION_TOKEN"),
            }),
            _ => match (file("aws_access_key_id"), file("aws_secret_access_key")) {
                (Some(access_key), Some(secret_key)) => Some(Credentials {
                    access_key,
                    secret_key,
                    session_token: file("aws_session_token"),
                }),
                _ => None,
            },
        };
        Ok(S3Config {
            region,
            endpoint,
            path_style,
            credentials: if anonymous { None } else { credentials },
        })
    }
}

/// The keys of section `profile` of an AWS INI file (`[profile name]` in
/// the config file, except for `default`).
fn ini_section(text: &str, profile: &str, config: bool) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            let name = if config {
                name.strip_prefix("profile ").map(str::trim).unwrap_or(name)
            } else {
                name
            };
            inside = name == profile;
            continue;
        }
        if inside && let Some((k, v)) = line.split_once('=') {
            out.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    out
}

/// Timeouts and retry bounds. Every wait is bounded: a server that stalls
/// fails a request after `read_timeout`, and a request retried for
/// transient failures gives up after `retry_for`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connecting (and resolving).
    pub connect_timeout: Duration,
    /// Longest wait for any single read from the connection (a stall).
    pub read_timeout: Duration,
    /// Total time a request may spend being retried.
    pub retry_for: Duration,
    /// Attempts at most, per request.
    pub attempts: u32,
    /// First back-off; it doubles up to [`Limits::MAX_BACKOFF`], with jitter.
    pub backoff: Duration,
}

impl Limits {
    /// The longest back-off between two attempts.
    pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

    /// The defaults, overridden by `WEIGHTLIFT_REMOTE_TIMEOUT` (seconds:
    /// the stall timeout) and `WEIGHTLIFT_REMOTE_RETRY_SECS` (seconds of
    /// retries per request).
    pub fn from_env() -> Result<Limits, Error> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`Limits::from_env`] with the environment given by `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Limits, Error> {
        let mut l = Limits::default();
        let secs = |name: &str| -> Result<Option<Duration>, Error> {
            let Some(v) = var(name) else { return Ok(None) };
            match v.trim().parse::<f64>() {
                Ok(s) if s > 0.0 && s <= 86_400.0 => Ok(Some(Duration::from_secs_f64(s))),
                _ => Err(Error::Setting {
                    name: name.into(),
                    value: v,
                    reason: "must be a number of seconds above 0, at most 86400",
                }),
            }
        };
        if let Some(t) = secs("WEIGHTLIFT_REMOTE_TIMEOUT")? {
            l.read_timeout = t;
            l.connect_timeout = l.connect_timeout.min(t);
        }
        if let Some(t) = secs("WEIGHTLIFT_REMOTE_RETRY_SECS")? {
            l.retry_for = t;
        }
        Ok(l)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            retry_for: Duration::from_secs(120),
            attempts: 10,
            backoff: Duration::from_millis(100),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn environment_first() {
        let c = S3Config::from_vars(vars(&[
            ("AWS_ACCESS_KEY_ID", "AK"),
            ("AWS_SECRET_ACCESS_KEY", "SK"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000/"),
        ]))
        .unwrap();
        assert_eq!(c.region, "eu-west-1");
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(c.path_style);
        assert_eq!(c.credentials.unwrap().secret_key, "SK");
    }

    #[test]
    fn profiles_from_files() {
        let dir = std::env::temp_dir().join(format!("wl-remote-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let creds = dir.join("credentials");
        let config = dir.join("config");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n[dev]\naws_access_key_id=P\naws_secret_access_key=PS\naws_session_token=T\n",
        )
        .unwrap();
        std::fs::write(
            &config,
            "[default]\nregion=us-west-2\n[profile dev]\nregion = ap-south-1\nendpoint_url = https://s3.example\n",
        )
        .unwrap();
        let (c, f) = (creds.to_str().unwrap(), config.to_str().unwrap());
        let d = S3Config::from_vars(vars(&[
            ("AWS_SHARED_CREDENTIALS_FILE", c),
            ("AWS_CONFIG_FILE", f),
        ]))
        .unwrap();
        assert_eq!(d.region, "us-west-2");
        assert_eq!(d.credentials.unwrap().access_key, "D");
        assert!(!d.path_style);
        let p = S3Config::from_vars(vars(&[
            ("AWS_SHARED_CREDENTIALS_FILE", c),
            ("AWS_CONFIG_FILE", f),
            ("AWS_PROFILE", "dev"),
        ]))
        .unwrap();
        assert_eq!(p.region, "ap-south-1");
        assert_eq!(p.endpoint.as_deref(), Some("https://s3.example"));
        let k = p.credentials.unwrap();
        assert_eq!(k.session_token.as_deref(), Some("T"));
        assert!(!format!("{k:?}").contains("PS"));
        let anon = S3Config::from_vars(vars(&[
            ("AWS_SHARED_CREDENTIALS_FILE", c),
            ("AWS_NO_SIGN_REQUEST", "true"),
        ]))
        .unwrap();
        assert!(anon.credentials.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_settings_are_named() {
        let e = S3Config::from_vars(vars(&[("AWS_ENDPOINT_URL", "localhost:9000")])).unwrap_err();
        assert!(e.to_string().contains("AWS_ENDPOINT_URL"));
        let e = Limits::from_vars(vars(&[("WEIGHTLIFT_REMOTE_TIMEOUT", "-1")])).unwrap_err();
        assert!(e.to_string().contains("WEIGHTLIFT_REMOTE_TIMEOUT"));
    }
}

//! Remote checkpoints in the benchmark: the loopback servers `--remote`
//! starts (moto's S3 server, or an HTTP range server, both run by
//! `bench_runner.py serve`), the server's limit (many ranged GETs in
//! parallel with a plain client, swept over range size and connections),
//! and the local copy `--verify` compares against.
//!
//! A remote object has no page-cache state of its own: the server's
//! files may be cached on its side, which is the server's business, so
//! remote loads run in one state.

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use weightlift::LoadOptions;
use weightlift_format::Checkpoint;
use weightlift_io::RangeRead;

/// Which loopback server `--remote` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// moto's S3 server (Python), the one the tests use.
    S3,
    /// The runner's HTTP range server answering S3's path-style GETs of
    /// one bucket (`bench`), signatures not checked: a read-only S3
    /// stand-in that serves ranges as fast as the HTTP one. moto reads a
    /// whole object for every ranged GET, so it measures moto.
    S3Range,
    /// The runner's HTTP range server.
    Http,
}

impl Kind {
    pub(crate) fn parse(s: &str) -> Result<Self> {
        match s {
            "s3" => Ok(Kind::S3),
            "s3-range" => Ok(Kind::S3Range),
            "http" => Ok(Kind::Http),
            _ => bail!(
                "--remote {s:?}: expected s3 (moto's server), s3-range (an S3 stand-in) or http"
            ),
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::S3 => "s3",
            Kind::S3Range => "s3-range",
            Kind::Http => "http",
        }
    }
}

/// A server the bench started: it serves until its standard input closes,
/// which dropping this does (then it is waited for, or killed).
pub(crate) struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// What the server is, for the report.
    pub what: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.stdin.take());
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment every process of a run against a loopback S3 server
/// gets: its endpoint, keys the server accepts, the region, no instance
/// metadata lookups, and path-style addressing for the Run:ai streamer
/// (weightlift takes path style from a custom endpoint by itself).
pub(crate) fn s3_env(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", "bench"),
        ("AWS_SECRET_ACCESS_KEY", "bench"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Start a `kind` server on 127.0.0.1 holding the checkpoint whose index
/// is `index` (its directory's files, under their directory's name), and
/// the URL of that index on it.
pub(crate) fn serve(py: &Path, kind: Kind, index: &Path) -> Result<(Server, String)> {
    let dir = index.parent().context("the index has no directory")?;
    let root = dir
        .parent()
        .context("the checkpoint's directory has no parent")?;
    let name = dir
        .file_name()
        .context("the checkpoint's directory has no name")?
        .to_string_lossy()
        .into_owned();
    let index_name = index
        .file_name()
        .context("the index has no name")?
        .to_string_lossy()
        .into_owned();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut cmd = Command::new(py);
    cmd.arg(crate::load::runner())
        .args(["serve", "--kind", kind.name(), "--root"])
        .arg(root);
    if kind == Kind::S3 {
        cmd.args(&files);
    }
    eprintln!(
        "starting the {} server on 127.0.0.1{}",
        match kind {
            Kind::S3 => "S3 (moto)",
            Kind::S3Range => "S3 stand-in (range)",
            Kind::Http => "HTTP range",
        },
        if kind == Kind::S3 {
            " and uploading the checkpoint"
        } else {
            ""
        }
    );
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting bench_runner.py serve")?;
    let stdin = child.stdin.take();
    let mut out = BufReader::new(child.stdout.take().context("no stdout")?);
    let mut server = Server {
        child,
        stdin,
        endpoint: String::new(),
        what: match kind {
            Kind::S3 => "moto's S3 server (moto_server, Python, threaded) on 127.0.0.1".into(),
            Kind::S3Range => "bench_runner.py's HTTP range server answering S3 path-style GETs of the bucket `bench` (Python, threaded, sendfile; signatures not checked: a read-only S3 stand-in) on 127.0.0.1".into(),
            Kind::Http => "bench_runner.py's HTTP range server (Python, threaded, sendfile) on 127.0.0.1".into(),
        },
    };
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line)? == 0 {
            bail!("the {kind:?} server stopped before saying where it listens");
        }
        if let Some(rest) = line.trim().strip_prefix("{\"endpoint\": \"") {
            server.endpoint = rest.trim_end_matches("\"}").to_string();
            break;
        }
    }
    let url = match kind {
        Kind::S3 | Kind::S3Range => format!("s3://bench/{name}/{index_name}"),
        Kind::Http => format!("{}/{name}/{index_name}", server.endpoint),
    };
    Ok((server, url))
}

/// `vars` over the process's environment.
fn var_in(vars: &[(String, String)], name: &str) -> Option<String> {
    vars.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var(name).ok())
}

/// Open the remote checkpoint `model` through weightlift's remote path,
/// with `vars` over the process's environment for the S3 settings; the
/// checkpoint and its shards as the engine reads them.
pub(crate) fn open(
    model: &str,
    vars: &[(String, String)],
) -> Result<(Checkpoint, Vec<Arc<dyn RangeRead>>)> {
    let var = |n: &str| var_in(vars, n);
    let limits = weightlift_remote::Limits::from_vars(var)?;
    let s3 = weightlift_remote::S3Config::from_vars(var)?;
    let client = Arc::new(weightlift_remote::Client::with_s3(limits, s3));
    let mut opts = LoadOptions::default();
    let ckpt = weightlift::remote::open_remote(&[model], &mut opts, client)
        .with_context(|| format!("opening {model}"))?;
    let remote = opts.engine.remote.context("no remote files")?;
    let shards = ckpt
        .shards()
        .iter()
        .map(|s| remote.get(s.path()).cloned().context("a shard not opened"))
        .collect::<Result<Vec<_>>>()?;
    Ok((ckpt, shards))
}

/// Copy every shard into `dir` (untimed), under its own file name, for
/// `--verify`'s reference read by safetensors.
pub(crate) fn download(shards: &[Arc<dyn RangeRead>], dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut buf = vec![0u8; 16 << 20];
    shards
        .iter()
        .map(|s| {
            let name = s.path().file_name().context("a shard without a name")?;
            let path = dir.join(name);
            let mut f = std::fs::File::create(&path)?;
            let mut at = 0;
            while at < s.size() {
                let n = s.read_at(&mut buf, at)?;
                ensure!(n > 0, "{}: ended at {at}", s.path().display());
                f.write_all(&buf[..n])?;
                at += n as u64;
            }
            Ok(path)
        })
        .collect()
}

/// One way of reading the objects for the limit: ranges of `range` bytes,
/// `conns` connections each with one request at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Config {
    pub range: usize,
    pub conns: usize,
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} MiB × {}", self.range >> 20, self.conns)
    }
}

impl Config {
    /// As `load-once --server` takes it: `RANGE:CONNS`.
    pub(crate) fn arg(&self) -> String {
        format!("{}:{}", self.range, self.conns)
    }

    pub(crate) fn parse(s: &str) -> Result<Self> {
        let (r, c) = s.split_once(':').context("expected RANGE:CONNS")?;
        let c = Config {
            range: crate::args::parse_size(r)? as usize,
            conns: c.parse().with_context(|| format!("{s:?}: connections"))?,
        };
        ensure!(c.range > 0 && c.conns > 0, "{s:?}: zero");
        Ok(c)
    }
}

/// The sweep: ranges of 1, 4, 8 and 16 MiB, over 4, 8, 16 and 32
/// connections.
pub(crate) fn sweep_configs() -> Vec<Config> {
    let mut v = Vec::new();
    for range in [1usize << 20, 4 << 20, 8 << 20, 16 << 20] {
        for conns in [4, 8, 16, 32] {
            v.push(Config { range, conns });
        }
    }
    v
}

/// How the limit reaches an object: a plain HTTP/1.1 client over a TCP
/// connection (no TLS, no signing: the loopback servers answer unsigned
/// requests), or, where the server refuses those, weightlift's own client
/// (ranged GETs signed with SigV4) without the loader around it.
#[derive(Debug, Clone)]
enum Reach {
    Plain { host: String, path: String },
    Client(Arc<dyn RangeRead>),
}

/// A shard as the limit reads it.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    reach: Reach,
    size: u64,
}

/// The plain URL of a shard: itself over HTTP, or its path-style address
/// on a custom `http://` S3 endpoint.
fn plain_url(shard: &str, vars: &[(String, String)]) -> Option<(String, String)> {
    let url = if shard.starts_with("http://") {
        shard.to_string()
    } else {
        let rest = shard.strip_prefix("s3://")?;
        let endpoint =
            var_in(vars, "AWS_ENDPOINT_URL_S3").or_else(|| var_in(vars, "AWS_ENDPOINT_URL"))?;
        format!("{}/{rest}", endpoint.trim_end_matches('/'))
    };
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_at(rest.find('/')?);
    Some((host.to_string(), path.to_string()))
}

/// The shards as the limit reads them, with the plain client where the
/// server answers it; and whether every shard is read plainly.
pub(crate) fn targets(
    shards: &[Arc<dyn RangeRead>],
    vars: &[(String, String)],
) -> (Vec<Target>, bool) {
    let mut plain = true;
    let t = shards
        .iter()
        .map(|s| {
            let reach = plain_url(&s.path().to_string_lossy(), vars)
                .filter(|(host, path)| {
                    let mut buf = [0u8; 16];
                    Conn::new(host)
                        .and_then(|mut c| c.get(path, 0, &mut buf))
                        .is_ok()
                })
                .map_or_else(
                    || {
                        plain = false;
                        Reach::Client(s.clone())
                    },
                    |(host, path)| Reach::Plain { host, path },
                );
            Target {
                reach,
                size: s.size(),
            }
        })
        .collect();
    (t, plain)
}

/// An HTTP/1.1 connection issuing one ranged GET at a time, kept alive
/// unless the server says `Connection: close` (moto's does), and then made
/// again for the next request.
struct Conn {
    host: String,
    r: Option<BufReader<TcpStream>>,
}

impl Conn {
    fn new(host: &str) -> Result<Conn> {
        Ok(Conn {
            host: host.to_string(),
            r: None,
        })
    }

    /// Read `buf.len()` bytes of `path` from `offset` (the range must lie
    /// within the object).
    fn get(&mut self, path: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        let r = match &mut self.r {
            Some(r) => r,
            None => {
                let s = TcpStream::connect(&self.host)
                    .with_context(|| format!("connecting to {}", self.host))?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(120)))?;
                self.r.insert(BufReader::with_capacity(64 << 10, s))
            }
        };
        let last = offset + buf.len() as u64 - 1;
        write!(
            r.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: {}\r\nRange: bytes={offset}-{last}\r\n\r\n",
            self.host
        )?;
        let mut line = String::new();
        r.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let mut length = None;
        let mut close = false;
        loop {
            line.clear();
            ensure!(r.read_line(&mut line)? > 0, "connection closed");
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse::<usize>().ok();
                } else if k.eq_ignore_ascii_case("connection") {
                    close = v.trim().eq_ignore_ascii_case("close");
                }
            }
        }
        ensure!(status == "206", "{path}: status {status:?} for a range");
        ensure!(
            length == Some(buf.len()),
            "{path}: {length:?} bytes for a range of {}",
            buf.len()
        );
        r.read_exact(buf)?;
        if close {
            self.r = None;
        }
        Ok(())
    }
}

/// Read every target whole (at most `limit` bytes in all, from the start
/// of each) as `config` says; bytes read and the time taken.
pub(crate) fn read(targets: &[Target], config: Config, limit: u64) -> Result<(u64, Duration)> {
    let mut jobs = Vec::new();
    let mut total = 0u64;
    'all: for (i, t) in targets.iter().enumerate() {
        let mut at = 0;
        while at < t.size {
            let len = (config.range as u64).min(t.size - at).min(limit - total);
            if len == 0 {
                break 'all;
            }
            jobs.push((i, at, len as usize));
            at += len;
            total += len;
        }
    }
    let next = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..config.conns.min(jobs.len().max(1)))
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    let mut buf = vec![0u8; config.range];
                    let mut conns: Vec<Option<Conn>> = targets.iter().map(|_| None).collect();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(i, at, len)) = jobs.get(k) else {
                            return Ok(());
                        };
                        let buf = &mut buf[..len];
                        match &targets[i].reach {
                            Reach::Plain { host, path } => {
                                if conns[i].is_none() {
                                    conns[i] = Some(Conn::new(host)?);
                                }
                                let c = conns[i].as_mut().expect("just made");
                                c.get(path, at, buf)?;
                            }
                            Reach::Client(o) => {
                                let n = o.read_at(buf, at)?;
                                ensure!(n == len, "{}: {n} of {len} bytes", o.path().display());
                            }
                        }
                        std::hint::black_box(&buf);
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("a limit reader panicked"))
    })?;
    Ok((total, t.elapsed()))
}

/// Every configuration of the sweep, each reading up to `limit` bytes,
/// fastest first: (configuration, GB/s).
pub(crate) fn sweep(targets: &[Target], limit: u64) -> Result<Vec<(Config, f64)>> {
    let mut v = Vec::new();
    for c in sweep_configs() {
        let (bytes, d) = read(targets, c, limit)?;
        v.push((c, bytes as f64 / d.as_secs_f64() / 1e9));
    }
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_round_trip() {
        for c in sweep_configs() {
            assert_eq!(Config::parse(&c.arg()).unwrap(), c);
        }
        assert_eq!(
            Config::parse("8MiB:8").unwrap(),
            Config {
                range: 8 << 20,
                conns: 8
            }
        );
        assert!(Config::parse("8MiB").is_err());
        assert!(Config::parse("0:8").is_err());
    }

    #[test]
    fn plain_urls() {
        let vars = vec![(
            "AWS_ENDPOINT_URL".to_string(),
            "http://127.0.0.1:9/".to_string(),
        )];
        assert_eq!(
            plain_url("s3://b/d/m.safetensors", &vars),
            Some(("127.0.0.1:9".into(), "/b/d/m.safetensors".into()))
        );
        assert_eq!(
            plain_url("http://h:8/x/m.safetensors", &[]),
            Some(("h:8".into(), "/x/m.safetensors".into()))
        );
        assert_eq!(plain_url("https://h/x", &vars), None);
    }
}

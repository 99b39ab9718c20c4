//! Remote checkpoints over HTTP, against a server on loopback that this
//! test runs itself: byte-equal loads of a file, of shards with an index,
//! and of a ServerlessLLM checkpoint by its `tensor_index.json`; both
//! hostile corpora (tests/corpus) giving the errors a local open gives; and
//! faults (a 503 storm, connections reset mid-body, stalls, a lying
//! Content-Length and an ignored Range on header and data reads, an object
//! replaced mid-load), each a successful retry or a clear error, never
//! wrong bytes or a hang.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{load_host, load_staged, scratch, write_shard};
use weightlift::LoadOptions;
use weightlift::remote::open_remote;
use weightlift_format::{Checkpoint, Source};
use weightlift_io::EngineOptions;
use weightlift_plan::Selection;
use weightlift_remote::{Client, Limits, RemoteFs};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    None,
    /// 503 SlowDown to this many GETs.
    Storm(usize),
    /// Half the body, then the connection closed, for this many GETs.
    Reset(usize),
    /// Headers, then silence, for this many GETs.
    Stall(usize),
    /// Headers, then one byte every 100 ms, each read well within the
    /// stall timeout, for this many GETs.
    Trickle(usize),
    /// A Content-Length 100 bytes longer than what is sent.
    Lie,
    /// 200 and the whole object, whatever the Range.
    IgnoreRange,
    /// After this many faulted GETs, every object gets a new version.
    Replace(usize),
}

struct State {
    files: HashMap<String, (Vec<u8>, u32)>,
    fault: Fault,
    /// GETs served before faults start (the opening ones).
    skip: usize,
    gets: usize,
}

struct Server {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl Server {
    fn start(files: HashMap<String, Vec<u8>>, fault: Fault, skip: usize) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            files: files.into_iter().map(|(k, v)| (k, (v, 1))).collect(),
            fault,
            skip,
            gets: 0,
        }));
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let s = s.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        Server { port, state }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/")[1..].to_owned();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let (fault, data, etag) = {
            let mut st = state.lock().unwrap();
            st.gets += 1;
            let faulted = st.gets > st.skip;
            let mut fault = if faulted { st.fault } else { Fault::None };
            match &mut st.fault {
                Fault::Storm(n) | Fault::Reset(n) | Fault::Stall(n) | Fault::Trickle(n)
                    if faulted =>
                {
                    if *n == 0 {
                        fault = Fault::None;
                    } else {
                        *n -= 1;
                    }
                }
                Fault::Replace(n) if faulted => {
                    if *n == 0 {
                        for (bytes, v) in st.files.values_mut() {
                            bytes.iter_mut().for_each(|b| *b = b.wrapping_add(1));
                            *v += 1;
                        }
                    } else {
                        *n -= 1;
                    }
                    fault = Fault::None;
                }
                _ => {}
            }
            match st.files.get(&path) {
                Some((d, v)) => (fault, d.clone(), format!("\"v{v}\"")),
                None => {
                    let _ = w.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
                    continue;
                }
            }
        };
        if fault == Fault::Storm(0) || matches!(fault, Fault::Storm(_)) {
            let body = "<Error><Code>SlowDown</Code></Error>";
            let _ = write!(
                w,
                "HTTP/1.1 503 Service Unavailable\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            continue;
        }
        if headers.get("if-match").is_some_and(|m| *m != etag) {
            let _ = w.write_all(b"HTTP/1.1 412 Precondition Failed\r\ncontent-length: 0\r\n\r\n");
            continue;
        }
        let size = data.len() as u64;
        let range = headers.get("range").and_then(|r| {
            let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
            let a: u64 = a.parse().ok()?;
            let b: u64 = b.parse::<u64>().ok()?.min(size.saturating_sub(1));
            Some((a, b))
        });
        let (status, start, end) = match range {
            // An empty object, or a range past its end, as servers answer.
            Some((a, _)) if fault != Fault::IgnoreRange && a >= size => {
                let _ = write!(
                    w,
                    "HTTP/1.1 416 Range Not Satisfiable\r\ncontent-range: bytes */{size}\r\ncontent-length: 0\r\n\r\n"
                );
                continue;
            }
            Some((a, b)) if fault != Fault::IgnoreRange && a <= b => {
                ("206 Partial Content", a, b + 1)
            }
            _ => ("200 OK", 0, size),
        };
        let body = &data[start as usize..end as usize];
        let announced = if fault == Fault::Lie {
            body.len() + 100
        } else {
            body.len()
        };
        let mut head = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {announced}\r\netag: {etag}\r\naccept-ranges: bytes\r\n"
        );
        if status.starts_with("206") {
            head += &format!("content-range: bytes {start}-{}/{size}\r\n", end - 1);
        }
        head += "\r\n";
        if w.write_all(head.as_bytes()).is_err() {
            return;
        }
        match fault {
            Fault::Reset(_) => {
                let _ = w.write_all(&body[..body.len() / 2]);
                let _ = w.shutdown(std::net::Shutdown::Both);
                return;
            }
            Fault::Stall(_) => {
                std::thread::sleep(Duration::from_secs(5));
                return;
            }
            Fault::Trickle(_) => {
                for b in body {
                    if w.write_all(&[*b]).and_then(|()| w.flush()).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                return;
            }
            Fault::Lie => {
                let _ = w.write_all(body);
                let _ = w.shutdown(std::net::Shutdown::Both);
                return;
            }
            _ => {
                if w.write_all(body).is_err() {
                    return;
                }
            }
        }
        // Drain nothing: requests have no body.
        let _ = r.get_ref().peek(&mut [0u8; 0]);
    }
}

fn limits() -> Limits {
    Limits {
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_millis(400),
        retry_for: Duration::from_secs(4),
        attempts: 8,
        backoff: Duration::from_millis(10),
    }
}

/// Small reads, so that a load of these small files takes many GETs (the
/// faults start part-way through it).
fn engine() -> EngineOptions {
    EngineOptions {
        queue_depth: 4,
        slot_size: 64 << 10,
        remote_range: 64 << 10,
        remote_in_flight: 4,
        ring_bytes: 256 << 10,
        ..EngineOptions::default()
    }
}

const SIZES: &[u64] = &[100_000, 3, 250_000, 77_777, 0, 40_000];

/// A local checkpoint in one file, and its bytes.
fn one_file(tag: &str) -> (PathBuf, Vec<u8>, common::Scratch) {
    let dir = scratch(tag);
    let path = dir.0.join("model.safetensors");
    let bytes = write_shard(&path, "t.", SIZES, 7);
    (path, bytes, dir)
}

fn open(urls: &[String]) -> Result<(Arc<Checkpoint>, LoadOptions), weightlift::Error> {
    open_cached(urls, None)
}

fn open_cached(
    urls: &[String],
    cache_dir: Option<&std::path::Path>,
) -> Result<(Arc<Checkpoint>, LoadOptions), weightlift::Error> {
    let mut options = LoadOptions {
        engine: engine(),
        cache_dir: cache_dir.map(|d| d.to_path_buf()),
        ..LoadOptions::default()
    };
    let ckpt = open_remote(urls, &mut options, Arc::new(Client::new(limits())))?;
    Ok((Arc::new(ckpt), options))
}

fn expected(path: &PathBuf) -> HashMap<String, Vec<u8>> {
    let ckpt = Arc::new(Checkpoint::open(path).unwrap());
    load_host(&ckpt, &Selection::All, &engine()).unwrap()
}

#[test]
fn a_file_loads_byte_equal_in_place_staged_and_alone() {
    let (path, bytes, _dir) = one_file("remote-one");
    let want = expected(&path);
    let server = Server::start(
        HashMap::from([("m/model.safetensors".to_owned(), bytes)]),
        Fault::None,
        0,
    );
    let (ckpt, options) = open(&[server.url("m/model.safetensors")]).unwrap();
    assert_eq!(server.state.lock().unwrap().gets, 1, "one GET opens a file");
    let got = load_host(&ckpt, &Selection::All, &options.engine).unwrap();
    assert_eq!(got, want);
    let staged = load_staged(&ckpt, &Selection::All, &options.engine, 3).unwrap();
    assert_eq!(staged, want);
    let mut session = weightlift::Session::<weightlift::Host>::new(
        ckpt.clone(),
        &Selection::All,
        options.clone(),
    )
    .unwrap();
    let t = session.get("t.2", &mut || true).unwrap();
    assert_eq!(t.bytes(), &want["t.2"][..]);
    let part = session.get_range("t.2", 1000..70_000).unwrap();
    assert_eq!(part.bytes(), &want["t.2"][1000..70_000]);
}

#[test]
fn shards_with_an_index_resolve_beside_it() {
    let dir = scratch("remote-index");
    let a = write_shard(&dir.0.join("a.safetensors"), "a.", SIZES, 1);
    let b = write_shard(&dir.0.join("b.safetensors"), "b.", &[5, 70_000], 2);
    let mut map = serde_json::Map::new();
    for i in 0..SIZES.len() {
        map.insert(format!("a.{i}"), "a.safetensors".into());
    }
    map.insert("b.0".into(), "./b.safetensors".into());
    map.insert("b.1".into(), "b.safetensors".into());
    let index = serde_json::json!({"metadata": {}, "weight_map": map}).to_string();
    let index_path = dir.0.join("model.safetensors.index.json");
    std::fs::write(&index_path, &index).unwrap();
    let want = expected(&index_path);
    let server = Server::start(
        HashMap::from([
            ("x/a.safetensors".to_owned(), a),
            ("x/b.safetensors".to_owned(), b),
            (
                "x/model.safetensors.index.json".to_owned(),
                index.into_bytes(),
            ),
        ]),
        Fault::None,
        0,
    );
    let (ckpt, options) = open(&[server.url("x/model.safetensors.index.json")]).unwrap();
    assert_eq!(ckpt.shards().len(), 2);
    assert_eq!(
        load_host(&ckpt, &Selection::All, &options.engine).unwrap(),
        want
    );
}

/// Tensors by name.
type Bytes = HashMap<String, Vec<u8>>;

/// Load the one-file checkpoint with `fault` starting after the opening
/// GET: the bytes loaded, or the error, and how long it took.
fn faulted(tag: &str, fault: Fault) -> (Result<Bytes, String>, Bytes, Duration) {
    let (path, bytes, _dir) = one_file(tag);
    let want = expected(&path);
    let server = Server::start(
        HashMap::from([("model.safetensors".to_owned(), bytes)]),
        fault,
        1,
    );
    let (ckpt, options) = open(&[server.url("model.safetensors")]).unwrap();
    let start = Instant::now();
    let got =
        load_host(&ckpt, &Selection::All, &options.engine).map_err(|e| weightlift_io::chain(&e));
    (got, want, start.elapsed())
}

#[test]
fn a_503_storm_is_retried() {
    let (got, want, _) = faulted("remote-storm", Fault::Storm(5));
    assert_eq!(got.unwrap(), want);
}

#[test]
fn connections_reset_mid_body_are_retried() {
    let (got, want, _) = faulted("remote-reset", Fault::Reset(4));
    assert_eq!(got.unwrap(), want);
}

#[test]
fn a_stall_times_out_and_is_retried() {
    let (got, want, _) = faulted("remote-stall", Fault::Stall(2));
    assert_eq!(got.unwrap(), want);
}

/// Load with `fault` that never ends: the error, which must say the load
/// gave up on the shard, within `bound`.
fn gives_up(tag: &str, fault: Fault, bound: Duration) -> String {
    let (got, _, took) = faulted(tag, fault);
    let e = got.unwrap_err();
    assert!(e.contains("gave up after"), "{e}");
    assert!(e.contains("model.safetensors"), "{e}");
    assert!(took < bound, "took {took:?}");
    e
}

#[test]
fn a_server_that_never_answers_fails_within_the_bound() {
    // Retries stop starting after 4 s; one more stall at most, per reader.
    let e = gives_up(
        "remote-stall-forever",
        Fault::Stall(usize::MAX),
        Duration::from_secs(10),
    );
    assert!(e.contains("tensor"), "{e}");
}

#[test]
fn a_server_that_trickles_is_cut_off_within_the_bound() {
    // Each byte comes well within the stall timeout; the body as a whole
    // would take hours.
    let e = gives_up(
        "remote-trickle",
        Fault::Trickle(usize::MAX),
        Duration::from_secs(15),
    );
    assert!(e.contains("cut off"), "{e}");
}

#[test]
fn a_storm_that_does_not_end_names_the_status() {
    let (got, _, _) = faulted("remote-storm-forever", Fault::Storm(usize::MAX));
    let e = got.unwrap_err();
    assert!(e.contains("503") && e.contains("SlowDown"), "{e}");
}

#[test]
fn a_lying_content_length_is_never_wrong_bytes() {
    let (got, _, _) = faulted("remote-lie", Fault::Lie);
    let e = got.unwrap_err();
    assert!(e.contains("announced"), "{e}");
}

#[test]
fn an_ignored_range_is_a_clear_error() {
    let (got, _, _) = faulted("remote-ignore", Fault::IgnoreRange);
    let e = got.unwrap_err();
    assert!(e.contains("ignores Range"), "{e}");
}

#[test]
fn an_object_replaced_mid_load_is_an_error_naming_it() {
    let (got, _, _) = faulted("remote-replace", Fault::Replace(2));
    let e = got.unwrap_err();
    assert!(e.contains("changed since it was opened"), "{e}");
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn a_missing_object_names_its_url_and_status() {
    let server = Server::start(HashMap::new(), Fault::None, 0);
    let e = open(&[server.url("nope.safetensors")]).unwrap_err();
    let e = weightlift_io::chain(&e);
    assert!(e.contains("nope.safetensors") && e.contains("404"), "{e}");
}

#[test]
fn a_lying_content_length_on_the_header_read_is_an_error_at_open() {
    let (_, bytes, _dir) = one_file("remote-lie-open");
    let server = Server::start(
        HashMap::from([("model.safetensors".to_owned(), bytes)]),
        Fault::Lie,
        0,
    );
    let e = weightlift_io::chain(&open(&[server.url("model.safetensors")]).unwrap_err());
    assert!(
        e.contains("announced") && e.contains("model.safetensors"),
        "{e}"
    );
}

#[test]
fn an_ignored_range_on_the_header_read_is_an_error_at_open_or_the_whole_small_object() {
    let (_, bytes, _dir) = one_file("remote-ignore-open");
    let server = Server::start(
        HashMap::from([("model.safetensors".to_owned(), bytes)]),
        Fault::IgnoreRange,
        0,
    );
    let e = weightlift_io::chain(&open(&[server.url("model.safetensors")]).unwrap_err());
    assert!(
        e.contains("ignores Range") && e.contains("model.safetensors"),
        "{e}"
    );
    // An object no longer than the first range comes whole: that is all of
    // it, and it loads.
    let dir = scratch("remote-ignore-small");
    let path = dir.0.join("small.safetensors");
    let small = write_shard(&path, "s.", &[10, 0, 3000], 3);
    let server = Server::start(
        HashMap::from([("small.safetensors".to_owned(), small)]),
        Fault::IgnoreRange,
        0,
    );
    let (ckpt, options) = open(&[server.url("small.safetensors")]).unwrap();
    assert_eq!(
        load_host(&ckpt, &Selection::All, &options.engine).unwrap(),
        expected(&path)
    );
}

/// Write `tensors` (name, bytes) in ServerlessLLM's layout into `dir`: each
/// record padded to 8 bytes, a new partition before a record that would
/// pass `limit`, each partition padded to 4096 bytes; the index as
/// `[offset, size, [len], [1], "torch.uint8"]`. Returns the files' bytes
/// by name.
fn write_sllm(
    dir: &std::path::Path,
    tensors: &[(String, Vec<u8>)],
    limit: usize,
) -> HashMap<String, Vec<u8>> {
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let mut closed = 0usize;
    let mut index = serde_json::Map::new();
    for (name, data) in tensors {
        if parts.is_empty() || parts.last().unwrap().len() + data.len() > limit {
            if let Some(last) = parts.last_mut() {
                last.resize(last.len().next_multiple_of(4096), 0);
                closed += last.len();
            }
            parts.push(Vec::new());
        }
        let last = parts.last_mut().unwrap();
        let offset = closed + last.len();
        last.extend_from_slice(data);
        last.resize(last.len().next_multiple_of(8), 0);
        index.insert(
            name.clone(),
            serde_json::json!([offset, data.len(), [data.len()], [1], "torch.uint8"]),
        );
    }
    if let Some(last) = parts.last_mut() {
        last.resize(last.len().next_multiple_of(4096), 0);
    }
    let mut files = HashMap::new();
    for (i, p) in parts.into_iter().enumerate() {
        std::fs::write(dir.join(format!("tensor.data_{i}")), &p).unwrap();
        files.insert(format!("tensor.data_{i}"), p);
    }
    let index = serde_json::Value::Object(index).to_string().into_bytes();
    std::fs::write(dir.join("tensor_index.json"), &index).unwrap();
    files.insert("tensor_index.json".to_owned(), index);
    files
}

#[test]
fn a_serverlessllm_checkpoint_loads_by_its_index_url() {
    let dir = scratch("remote-sllm");
    let tensors: Vec<(String, Vec<u8>)> = SIZES
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let bytes = (0..n).map(|j| (j * 7 + i as u64) as u8).collect();
            (format!("s.{i}"), bytes)
        })
        .collect();
    let files = write_sllm(&dir.0, &tensors, 128 << 10);
    assert!(files.len() >= 4, "several partitions: {:?}", files.keys());
    let want = expected(&dir.0);
    let server = Server::start(
        files
            .into_iter()
            .map(|(k, v)| (format!("sl/{k}"), v))
            .collect(),
        Fault::None,
        0,
    );
    let (ckpt, options) = open(&[server.url("sl/tensor_index.json")]).unwrap();
    assert!(ckpt.is_sllm());
    assert_eq!(
        ckpt.shards().len(),
        Checkpoint::open(&dir.0).unwrap().shards().len()
    );
    assert_eq!(
        load_host(&ckpt, &Selection::All, &options.engine).unwrap(),
        want
    );
    assert_eq!(
        load_staged(&ckpt, &Selection::All, &options.engine, 3).unwrap(),
        want
    );
    let mut session = weightlift::Session::<weightlift::Host>::new(
        ckpt.clone(),
        &Selection::All,
        options.clone(),
    )
    .unwrap();
    let t = session.get("s.2", &mut || true).unwrap();
    assert_eq!(t.bytes(), &want["s.2"][..]);
    let part = session.get_range("s.3", 100..70_000).unwrap();
    assert_eq!(part.bytes(), &want["s.3"][100..70_000]);
}

/// `text` with `from` written as `to`, so that messages about a local path
/// and about a URL compare.
fn neutral(text: &str, from: &str) -> String {
    text.replace(from, "<at>")
}

#[test]
fn the_serverlessllm_corpus_over_http_gives_the_errors_a_local_open_gives() {
    let root = scratch("remote-sllm-corpus");
    let mut files = HashMap::new();
    let entries = weightlift_tests::sllm_corpus::entries();
    for e in &entries {
        let at = root.0.join(e.name);
        e.write(&at).unwrap();
        for f in std::fs::read_dir(&at).unwrap() {
            let f = f.unwrap();
            let name = f.file_name().into_string().unwrap();
            files.insert(
                format!("{}/{name}", e.name),
                std::fs::read(f.path()).unwrap(),
            );
        }
    }
    let server = Server::start(files, Fault::None, 0);
    let fs = RemoteFs::new(Arc::new(Client::new(limits())));
    for e in &entries {
        let at = root.0.join(e.name);
        let url = server.url(e.name);
        let local = Checkpoint::open(at.join("tensor_index.json"));
        let remote = Checkpoint::open_in(
            &fs,
            &Source::Path(PathBuf::from(format!("{url}/tensor_index.json"))),
        );
        assert!(
            e.expect.matches(&remote, std::path::Path::new(&url)),
            "{}: {:?}",
            e.name,
            remote.as_ref().map(|c| c.len())
        );
        match (local, remote) {
            (Ok(l), Ok(r)) => assert_eq!(l.len(), r.len(), "{}", e.name),
            (Err(l), Err(r)) => assert_eq!(
                neutral(&weightlift_io::chain(&l), at.to_str().unwrap()),
                neutral(&weightlift_io::chain(&r), &url),
                "{}",
                e.name
            ),
            (l, r) => panic!("{}: local {:?}, remote {:?}", e.name, l.err(), r.err()),
        }
    }
}

#[test]
fn the_safetensors_corpus_over_http_gives_the_errors_a_local_open_gives() {
    let root = scratch("remote-corpus");
    let mut files = HashMap::new();
    let entries = weightlift_tests::corpus::entries();
    for e in &entries {
        std::fs::write(root.0.join(e.file_name()), &e.bytes).unwrap();
        files.insert(e.file_name(), e.bytes.clone());
    }
    for fault in [Fault::None, Fault::IgnoreRange] {
        let server = Server::start(files.clone(), fault, 0);
        let fs = RemoteFs::new(Arc::new(Client::new(limits())));
        for e in &entries {
            let (path, url) = (root.0.join(e.file_name()), server.url(&e.file_name()));
            let local = Checkpoint::open(&path);
            let remote = Checkpoint::open_in(&fs, &Source::Path(PathBuf::from(&url)));
            if fault == Fault::IgnoreRange && e.bytes.len() as u64 > weightlift_remote::FIRST_RANGE
            {
                // Longer than the first range: the whole object is refused.
                let r = weightlift_io::chain(&remote.unwrap_err());
                assert!(r.contains("ignores Range") && r.contains(&url), "{r}");
                continue;
            }
            match (local, remote) {
                (Ok(l), Ok(r)) => assert_eq!(l.len(), r.len(), "{}", e.name),
                (Err(l), Err(r)) => assert_eq!(
                    neutral(&weightlift_io::chain(&l), path.to_str().unwrap()),
                    neutral(&weightlift_io::chain(&r), &url),
                    "{} ({fault:?})",
                    e.name
                ),
                (l, r) => panic!(
                    "{} ({fault:?}): local {:?}, remote {:?}",
                    e.name,
                    l.err(),
                    r.err()
                ),
            }
        }
    }
}

/// The cache directory's file names, sorted.
fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_cache_keeps_whole_shards_that_later_loads_read_until_the_object_changes() {
    let (path, bytes, dir) = one_file("remote-cache");
    let want = expected(&path);
    let cache = dir.0.join("cache");
    let server = Server::start(
        HashMap::from([("m/model.safetensors".to_owned(), bytes.clone())]),
        Fault::None,
        0,
    );
    let url = server.url("m/model.safetensors");
    let gets = || server.state.lock().unwrap().gets;
    let load = |ckpt: &Arc<Checkpoint>, options: &LoadOptions| {
        load_host(ckpt, &Selection::All, &options.engine).unwrap()
    };

    // The first open fetches the object whole; the load reads the copy.
    let (ckpt, options) = open_cached(std::slice::from_ref(&url), Some(&cache)).unwrap();
    let fetched = gets();
    assert!(fetched > 1, "the object was fetched");
    assert_eq!(load(&ckpt, &options), want);
    assert_eq!(gets(), fetched, "the load read the local copy");
    let names = listing(&cache);
    assert_eq!(names.len(), 2, "{names:?}");
    let copy = cache.join(&names[0]);
    assert!(names[0].ends_with("-model.safetensors") && names[1].ends_with(".meta"));
    assert_eq!(std::fs::read(&copy).unwrap(), bytes);
    let meta = std::fs::read_to_string(cache.join(&names[1])).unwrap();
    assert!(meta.contains(&format!("url={url}\n")) && meta.contains("etag=\"v1\"\n"));
    assert!(meta.contains(&format!("size={}\n", bytes.len())));

    // The next open asks only for the header (to check the version).
    let (ckpt, options) = open_cached(std::slice::from_ref(&url), Some(&cache)).unwrap();
    assert_eq!(gets(), fetched + 1);
    assert_eq!(load(&ckpt, &options), want);
    assert_eq!(gets(), fetched + 1);

    // A copy cut short, or a record that does not match, is not used.
    for damage in ["truncate", "meta"] {
        match damage {
            "truncate" => std::fs::File::options()
                .write(true)
                .open(&copy)
                .unwrap()
                .set_len(1000)
                .unwrap(),
            _ => std::fs::write(cache.join(&names[1]), "url=elsewhere\n").unwrap(),
        }
        let before = gets();
        let (ckpt, options) = open_cached(std::slice::from_ref(&url), Some(&cache)).unwrap();
        assert!(gets() > before + 1, "{damage}: fetched again");
        assert_eq!(load(&ckpt, &options), want, "{damage}");
        assert_eq!(std::fs::read(&copy).unwrap(), bytes, "{damage}");
        assert_eq!(listing(&cache), names, "{damage}");
    }

    // The object replaced: its new version is fetched, the old copy goes.
    let other = dir.0.join("other.safetensors");
    let new_bytes = write_shard(&other, "t.", SIZES, 8);
    {
        let mut st = server.state.lock().unwrap();
        let entry = st.files.get_mut("m/model.safetensors").unwrap();
        *entry = (new_bytes.clone(), entry.1 + 1);
    }
    let (ckpt, options) = open_cached(std::slice::from_ref(&url), Some(&cache)).unwrap();
    assert_eq!(load(&ckpt, &options), expected(&other));
    let now = listing(&cache);
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(!now.contains(&names[0]), "the old copy is removed: {now:?}");
    assert_eq!(std::fs::read(cache.join(&now[0])).unwrap(), new_bytes);
}

#[test]
fn a_fetch_into_the_cache_that_fails_leaves_nothing_behind() {
    let (_, bytes, dir) = one_file("remote-cache-fail");
    let cache = dir.0.join("cache");
    let server = Server::start(
        HashMap::from([("model.safetensors".to_owned(), bytes)]),
        Fault::Storm(usize::MAX),
        1,
    );
    let e = open_cached(&[server.url("model.safetensors")], Some(&cache)).unwrap_err();
    let e = weightlift_io::chain(&e);
    assert!(e.contains("model.safetensors") && e.contains("503"), "{e}");
    assert_eq!(listing(&cache), Vec::<String>::new());
}

#[test]
fn a_serverlessllm_checkpoint_is_cached_partition_by_partition() {
    let dir = scratch("remote-sllm-cache");
    let tensors: Vec<(String, Vec<u8>)> = SIZES
        .iter()
        .enumerate()
        .map(|(i, &n)| (format!("s.{i}"), vec![i as u8 + 1; n as usize]))
        .collect();
    let files = write_sllm(&dir.0, &tensors, 128 << 10);
    let partitions = files.len() - 1;
    let want = expected(&dir.0);
    let server = Server::start(
        files
            .into_iter()
            .map(|(k, v)| (format!("sl/{k}"), v))
            .collect(),
        Fault::None,
        0,
    );
    let cache = dir.0.join("cache");
    for round in 0..2 {
        let (ckpt, options) =
            open_cached(&[server.url("sl/tensor_index.json")], Some(&cache)).unwrap();
        assert_eq!(
            load_host(&ckpt, &Selection::All, &options.engine).unwrap(),
            want,
            "round {round}"
        );
        assert_eq!(listing(&cache).len(), 2 * partitions, "round {round}");
    }
}

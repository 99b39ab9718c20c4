//! Opening checkpoints from real files: only regular files, refused without
//! blocking; names are bytes; each shard's version is recorded.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use weightlift_format::{Checkpoint, Dtype, Error, TensorSpec, encode_header};

/// A fresh directory under cargo's target directory, removed afterwards.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("format-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_shard(path: &Path, name: &str) {
    let enc = encode_header(&[TensorSpec::new(name, Dtype::U8, [16])], None).unwrap();
    let mut bytes = enc.bytes;
    bytes.resize(bytes.len() + enc.data_len as usize, 7);
    std::fs::write(path, bytes).unwrap();
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// Open `path` on a thread, so that an open that blocks fails the test
/// instead of hanging it.
fn open_within(path: &Path, limit: Duration) -> Result<Checkpoint, Error> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(Checkpoint::open(&path));
    });
    rx.recv_timeout(limit).expect("opening blocked")
}

#[test]
fn a_fifo_is_refused_naming_it_given_alone_or_in_a_directory() {
    let dir = Scratch::new("fifo");
    write_shard(&dir.0.join("a.safetensors"), "a");
    let fifo = dir.0.join("b.safetensors");
    mkfifo(&fifo);
    for path in [fifo.clone(), dir.0.clone()] {
        match open_within(&path, Duration::from_secs(20)) {
            Err(e @ Error::Io { .. }) => {
                let message = e.to_string();
                assert!(
                    message.contains("b.safetensors") && message.contains("FIFO"),
                    "{message}"
                );
            }
            other => panic!(
                "{}: expected the FIFO refused, got {other:?}",
                path.display()
            ),
        }
    }
}

#[test]
fn a_shard_whose_name_is_not_utf8_is_loaded() {
    let dir = Scratch::new("bytes");
    write_shard(&dir.0.join("a.safetensors"), "a");
    let odd = dir.0.join(OsStr::from_bytes(b"\xff\xfe.safetensors"));
    write_shard(&odd, "b");
    let ckpt = Checkpoint::open(&dir.0).unwrap();
    assert_eq!(ckpt.shards().len(), 2);
    let b = ckpt.find("b").expect("the tensor of the non-UTF-8 shard");
    assert_eq!(ckpt.shard(b.file).path(), odd);
}

#[test]
fn each_shard_records_the_version_its_header_was_read_from() {
    let dir = Scratch::new("stamp");
    let path = dir.0.join("a.safetensors");
    write_shard(&path, "a");
    let ckpt = Checkpoint::open(&path).unwrap();
    let stamp = *ckpt.shards()[0]
        .stamp()
        .expect("a stamp from the file system");
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(stamp, weightlift_format::Stamp::of(&meta));
    assert_eq!(stamp.size, meta.len());
    // A rewrite of the same size is a new version (written past one clock
    // tick, for file systems without fine-grained timestamps).
    std::thread::sleep(Duration::from_millis(20));
    write_shard(&path, "a");
    let now = weightlift_format::Stamp::of(&std::fs::metadata(&path).unwrap());
    assert_eq!(stamp.change(&now), Some("modification time"));
}

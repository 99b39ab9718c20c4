//! Reads straight into device memory, through the host-memory stand-in
//! reader: every byte lands, each tensor comes back once, the one read rule
//! holds (interrupted and short reads go on, a file that shrank is
//! truncated, naming file and offset), errors name file and offset (and,
//! from a device load, the tensor), and dropping mid-flight waits.

use std::cell::Cell;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use weightlift::device::{
    Allocate, DirectDeviceLoad, DirectJob, DirectLoad, Loaded, direct_files, reader_files,
};
use weightlift::{Checkpoint, Error, TensorId};
use weightlift_gpu::{DirectReader, HostDevice, HostFileReader, OpenedFile};
use weightlift_io::ReadFile;
use weightlift_tests::fixtures::{Scratch, plain_bytes, write_u8_shard};

fn file(tag: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weightlift-direct-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("data.bin");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// The stand-in reader opened on `path`, which must be `size` bytes long.
fn reader(path: &Path, size: u64) -> Result<HostFileReader, Error> {
    let file = std::fs::File::open(path).map_err(|source| weightlift_io::Error::Open {
        file: path.to_path_buf(),
        source,
    })?;
    Ok(HostFileReader::new(vec![OpenedFile {
        path: path.to_path_buf(),
        file,
        size,
    }]))
}

/// Run reads of `ranges` (offset, len) through `reader` into fresh
/// buffers; the buffers, or the error with its tensor.
fn run_with(
    reader: Arc<dyn DirectReader>,
    ranges: &[(u64, usize)],
    threads: usize,
    chunk: usize,
) -> Result<Vec<Vec<u8>>, (usize, Error)> {
    let mut dests: Vec<Vec<u8>> = ranges.iter().map(|&(_, n)| vec![0xEE; n]).collect();
    {
        let mut load = DirectLoad::new(reader, threads, chunk).map_err(|e| (0, e))?;
        for (id, (&(offset, len), d)) in ranges.iter().zip(dests.iter_mut()).enumerate() {
            let job = DirectJob {
                id,
                file: 0,
                offset,
                len,
                dst: d.as_mut_ptr() as u64,
            };
            // SAFETY: `dests` outlives the load and is not touched meanwhile.
            unsafe { load.submit(job) }.map_err(|e| (id, e))?;
        }
        let mut seen = vec![false; ranges.len()];
        while load.in_flight() > 0 {
            for id in load.next_done(Duration::from_millis(50))? {
                assert!(!seen[id], "tensor {id} handed back twice");
                seen[id] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(load.in_flight_bytes(), 0);
    }
    Ok(dests)
}

/// [`run_with`] the stand-in reader of `path`, opened expecting `size` bytes.
fn run(
    path: &Path,
    size: u64,
    ranges: &[(u64, usize)],
    threads: usize,
    chunk: usize,
) -> Result<Vec<Vec<u8>>, (usize, Error)> {
    let reader = reader(path, size).map_err(|e| (0, e))?;
    run_with(Arc::new(reader), ranges, threads, chunk)
}

#[test]
fn every_byte_lands_in_chunks_on_several_threads() {
    let data = pattern(300_000);
    let path = file("bytes", &data);
    let ranges = [
        (0, 0),
        (0, 1),
        (3, 100_000),
        (100_003, 7),
        (100_010, 199_990),
        (299_999, 1),
    ];
    for (threads, chunk) in [(1, 1 << 20), (3, 4096), (4, 1000)] {
        let got = run(&path, data.len() as u64, &ranges, threads, chunk).unwrap();
        for (d, &(o, n)) in got.iter().zip(&ranges) {
            assert!(
                d[..] == data[o as usize..o as usize + n],
                "{threads} threads, chunk {chunk}, at {o}"
            );
        }
    }
}

#[test]
fn a_short_file_is_an_error_naming_file_and_offset() {
    let path = file("short", &pattern(1100));
    let reader = reader(&path, 1100).unwrap();
    // Opened at 1100 bytes, then cut to 1000: the read at 1000 finds the
    // end before the size the file had at open.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1000)
        .unwrap();
    match run_with(Arc::new(reader), &[(0, 10), (900, 200)], 2, 64) {
        Err((
            id,
            Error::Io(
                ref e @ weightlift_io::Error::Truncated {
                    file: ref p,
                    at,
                    size: 1100,
                },
            ),
        )) => {
            assert_eq!((id, p), (1, &path));
            // Whichever chunk past the new end its thread read first.
            assert!((1000..1100).contains(&at), "{e}");
            assert!(e.to_string().contains(&format!("file ends at {at}")), "{e}");
        }
        other => panic!("expected a truncated file, got {:?}", other.map(|_| ())),
    }
    // A tensor past the end of the file as it was at open is refused
    // before anything is read.
    match run(&path, 1000, &[(0, 10), (900, 200)], 2, 64) {
        Err((
            1,
            ref e @ Error::PastEnd {
                file: ref p,
                offset: 900,
                len: 200,
                size: 1000,
            },
        )) => {
            assert_eq!(p, &path);
            assert_eq!(e.file(), Some(path.as_path()));
        }
        other => panic!(
            "expected a tensor past the end, got {:?}",
            other.map(|_| ())
        ),
    }
}

/// The stand-in reader, with every other read of each thread interrupted
/// and the others cut to at most `cap` bytes.
struct Flaky {
    inner: HostFileReader,
    cap: usize,
}

thread_local! {
    /// Reads made on this thread.
    static CALLS: Cell<usize> = const { Cell::new(0) };
}

impl DirectReader for Flaky {
    fn path(&self, file: usize) -> &Path {
        self.inner.path(file)
    }

    fn size(&self, file: usize) -> u64 {
        self.inner.size(file)
    }

    unsafe fn read(
        &self,
        file: usize,
        dst: u64,
        len: usize,
        offset: u64,
    ) -> Result<io::Result<usize>, weightlift_gpu::Error> {
        let call = CALLS.replace(CALLS.get() + 1);
        if call.is_multiple_of(2) {
            let code = if offset.is_multiple_of(3) {
                libc::EAGAIN
            } else {
                libc::EINTR
            };
            return Ok(Err(io::Error::from_raw_os_error(code)));
        }
        // SAFETY: the caller's contract, for a prefix of its range.
        unsafe { self.inner.read(file, dst, len.min(self.cap), offset) }
    }
}

#[test]
fn interrupted_and_short_reads_go_on_until_every_byte_lands() {
    let data = pattern(50_000);
    let path = file("flaky", &data);
    let ranges = [(0, 50_000), (7, 333), (49_999, 1)];
    for (threads, chunk, cap) in [(1, 1 << 20, 1000), (3, 4096, 77)] {
        let flaky = Flaky {
            inner: reader(&path, data.len() as u64).unwrap(),
            cap,
        };
        let got = run_with(Arc::new(flaky), &ranges, threads, chunk).unwrap();
        for (d, &(o, n)) in got.iter().zip(&ranges) {
            assert!(d[..] == data[o as usize..o as usize + n], "at {o}");
        }
    }
}

/// A reader whose reads fail with `errno`.
struct Failing(HostFileReader, i32);

impl DirectReader for Failing {
    fn path(&self, file: usize) -> &Path {
        self.0.path(file)
    }

    fn size(&self, file: usize) -> u64 {
        self.0.size(file)
    }

    unsafe fn read(
        &self,
        _file: usize,
        _dst: u64,
        _len: usize,
        _offset: u64,
    ) -> Result<io::Result<usize>, weightlift_gpu::Error> {
        Ok(Err(io::Error::from_raw_os_error(self.1)))
    }
}

#[test]
fn a_failed_read_names_file_and_offset_and_one_that_never_ends_stops() {
    let path = file("failing", &pattern(10_000));
    let failing = Failing(reader(&path, 10_000).unwrap(), libc::EIO);
    match run_with(Arc::new(failing), &[(4000, 100)], 1, 64) {
        Err((
            0,
            Error::Io(weightlift_io::Error::Read {
                file,
                offset: 4000,
                len: 64,
                source,
            }),
        )) => {
            assert_eq!(file, path);
            assert_eq!(source.raw_os_error(), Some(libc::EIO));
        }
        other => panic!("expected a read error, got {:?}", other.map(|_| ())),
    }
    // Interrupted for ever: an error after the rule's tries, not a hang.
    let interrupted = Failing(reader(&path, 10_000).unwrap(), libc::EINTR);
    match run_with(Arc::new(interrupted), &[(0, 10)], 1, 64) {
        Err((0, Error::Io(weightlift_io::Error::Read { source, .. }))) => {
            assert_eq!(source.raw_os_error(), Some(libc::EINTR));
        }
        other => panic!("expected a read error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn dropping_mid_flight_waits_for_the_reads() {
    let data = pattern(4 << 20);
    let path = file("drop", &data);
    let reader = reader(&path, data.len() as u64).unwrap();
    let mut dests: Vec<Vec<u8>> = (0..64).map(|_| vec![0; 64 << 10]).collect();
    let mut load = DirectLoad::new(Arc::new(reader), 4, 4096).unwrap();
    for (id, d) in dests.iter_mut().enumerate() {
        let job = DirectJob {
            id,
            file: 0,
            offset: (id * 65_536) as u64,
            len: 65_536,
            dst: d.as_mut_ptr() as u64,
        };
        // SAFETY: `dests` outlives `load`, dropped below before they are read.
        unsafe { load.submit(job) }.unwrap();
    }
    drop(load);
    // Whatever landed is the file's; nothing writes any more.
    let snapshot = dests.clone();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(snapshot, dests);
}

fn go() -> bool {
    true
}

/// A checkpoint of one shard of tensors of awkward sizes, on a real disk.
fn checkpoint(tag: &str) -> (Scratch, Arc<Checkpoint>) {
    let dir = Scratch::new(Path::new(env!("CARGO_TARGET_TMPDIR")), tag);
    let sizes: Vec<u64> = (0..24).map(|i| [0, 1, 7, 4096, 70_001][i % 5]).collect();
    write_u8_shard(&dir.0.join("a.safetensors"), "t", &sizes, 3);
    let ckpt = Checkpoint::open(&dir.0).unwrap();
    (dir, Arc::new(ckpt))
}

/// The stand-in reader over every shard of `ckpt`.
fn reader_of(ckpt: &Checkpoint) -> (Arc<dyn DirectReader>, Vec<ReadFile>) {
    let files = direct_files(ckpt, false).unwrap();
    let reader = HostFileReader::new(reader_files(&files).unwrap());
    (Arc::new(reader), files)
}

#[test]
fn a_device_load_hands_out_every_tensor_and_fails_naming_a_file_cut() {
    let (_dir, ckpt) = checkpoint("direct-device");
    let ids: Vec<TensorId> = (0..ckpt.len()).map(|i| TensorId(i as u32)).collect();
    let plain = plain_bytes(&ckpt);
    let device = Arc::new(HostDevice::new());
    let (reader, files) = reader_of(&ckpt);
    let mut load = DirectDeviceLoad::start(
        reader,
        files,
        ckpt.clone(),
        ids.clone(),
        Allocate(device.clone()),
        3,
    )
    .unwrap();
    assert!(load.describe().contains("CUFILE"), "{}", load.describe());
    let mut seen = 0;
    while let Some(batch) = load.next(&mut go).unwrap() {
        for Loaded { id, owner } in batch {
            assert_eq!(owner.bytes(), &plain[&ckpt.tensor(id).name][..]);
            seen += 1;
        }
    }
    assert_eq!(seen, ids.len());

    // Cut inside the last tensor once the load started: the read that
    // meets the end, or the check of the file before a tensor is handed
    // out, fails the load naming the file and a tensor.
    let (reader, files) = reader_of(&ckpt);
    let path = ckpt.shards()[0].path().to_path_buf();
    let last = ckpt.tensor(*ids.last().unwrap());
    let mut load = DirectDeviceLoad::start(
        reader,
        files,
        ckpt.clone(),
        ids.clone(),
        Allocate(device.clone()),
        2,
    )
    .unwrap();
    let cut = ckpt.shards()[0].data_start() + last.range.start + 1;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut)
        .unwrap();
    let err = loop {
        match load.next(&mut go) {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the load finished though its file was cut"),
            Err(e) => break e,
        }
    };
    assert!(err.tensor().is_some(), "{err:?}");
    assert_eq!(err.file(), Some(path.as_path()));
    assert!(
        matches!(
            err.innermost(),
            Error::Io(
                weightlift_io::Error::Truncated { file, .. }
                | weightlift_io::Error::Changed { file, what: "size", .. }
            ) if file == &path
        ),
        "{err:?}"
    );
    // After a failure, nothing more.
    assert!(load.next(&mut go).unwrap().is_none());
    drop(load);

    // Cut before the files were opened for a load: refused before
    // anything is read.
    match direct_files(&ckpt, false) {
        Err(Error::Changed { file, what: "size" }) => assert_eq!(file, path),
        Err(other) => panic!("expected the cut file found at open, got {other:?}"),
        Ok(_) => panic!("the files of a cut checkpoint opened"),
    }
}

#[test]
fn each_tensor_is_read_once_whatever_the_ids_and_foreign_ids_are_refused() {
    let (_dir, ckpt) = checkpoint("direct-ids");
    let plain = plain_bytes(&ckpt);
    let device = Arc::new(HostDevice::new());
    // The same id twice: read once (a second read into the first's
    // destination, or a second destination, would be a use after free).
    let ids = vec![TensorId(1), TensorId(0), TensorId(1), TensorId(0)];
    let (reader, files) = reader_of(&ckpt);
    let mut load = DirectDeviceLoad::start(
        reader,
        files,
        ckpt.clone(),
        ids,
        Allocate(device.clone()),
        2,
    )
    .unwrap();
    let mut seen = Vec::new();
    while let Some(batch) = load.next(&mut go).unwrap() {
        for Loaded { id, owner } in batch {
            assert_eq!(owner.bytes(), &plain[&ckpt.tensor(id).name][..]);
            seen.push(id);
        }
    }
    seen.sort();
    assert_eq!(seen, [TensorId(0), TensorId(1)]);
    let foreign = TensorId(ckpt.len() as u32);
    let (reader, files) = reader_of(&ckpt);
    match DirectDeviceLoad::start(
        reader,
        files,
        ckpt.clone(),
        vec![foreign],
        Allocate(device),
        1,
    ) {
        Err(Error::Select(weightlift_plan::Error::UnknownId { id, .. })) => assert_eq!(id, foreign),
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("a foreign id was accepted"),
    }
}

#[test]
fn a_file_rewritten_in_place_during_a_device_load_fails_it_naming_file_and_tensor() {
    let (_dir, ckpt) = checkpoint("direct-rewritten");
    let ids: Vec<TensorId> = (0..ckpt.len()).map(|i| TensorId(i as u32)).collect();
    let device = Arc::new(HostDevice::new());
    let (reader, files) = reader_of(&ckpt);
    let mut load =
        DirectDeviceLoad::start(reader, files, ckpt.clone(), ids, Allocate(device), 2).unwrap();
    // The same size, other bytes, written past one clock tick of coarse
    // timestamps: no tensor of the new bytes may be handed out.
    std::thread::sleep(Duration::from_millis(20));
    let path = ckpt.shards()[0].path().to_path_buf();
    let mut bytes = std::fs::read(&path).unwrap();
    let start = ckpt.shards()[0].data_start() as usize;
    bytes[start..].iter_mut().for_each(|b| *b = !*b);
    std::fs::write(&path, &bytes).unwrap();
    let mut go = || true;
    let err = match load.next(&mut go) {
        Ok(Some(_)) => panic!("a tensor was handed out after its file was rewritten"),
        Ok(None) => panic!("the load finished though its file was rewritten"),
        Err(e) => e,
    };
    assert_eq!(err.file(), Some(path.as_path()));
    assert!(err.tensor().is_some(), "{err:?}");
    assert!(
        matches!(
            err.innermost(),
            Error::Io(weightlift_io::Error::Changed {
                what: "modification time",
                ..
            })
        ),
        "{err:?}"
    );
}

//! Fuzz `Checkpoint::open_in` on one in-memory file whose reads come back
//! in short pieces, and check it agrees with `Header::parse_file`.
#![no_main]

use std::io;
use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use weightlift_format::{Checkpoint, Error, FileAt, Fs, Header, Source};

const NAME: &str = "fuzz.safetensors";

/// A file in memory whose reads return at most `chunk` bytes.
struct MemFile<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl FileAt for MemFile<'_> {
    fn size(&self) -> io::Result<u64> {
        Ok(self.data.len() as u64)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset).map_or(self.data.len(), |o| o.min(self.data.len()));
        let n = buf.len().min(self.chunk).min(self.data.len() - start);
        buf[..n].copy_from_slice(&self.data[start..start + n]);
        Ok(n)
    }
}

/// A file system holding the one file [`NAME`].
struct MemFs<'a> {
    file: MemFile<'a>,
}

impl Fs for MemFs<'_> {
    fn open(&self, path: &Path) -> io::Result<Box<dyn FileAt + '_>> {
        if path != Path::new(NAME) {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok(Box::new(MemFile {
            data: self.file.data,
            chunk: self.file.chunk,
        }))
    }

    fn is_dir(&self, _: &Path) -> io::Result<bool> {
        Ok(false)
    }

    fn list_dir(&self, _: &Path) -> io::Result<Vec<PathBuf>> {
        Err(io::ErrorKind::NotADirectory.into())
    }
}

fuzz_target!(|data: &[u8]| {
    // Read size from the first byte, so the fuzzer can choose short reads.
    let chunk = match data.first() {
        Some(&b) if b & 0x80 != 0 => usize::from(b & 0x7f) + 1,
        _ => usize::MAX,
    };
    let fs = MemFs {
        file: MemFile { data, chunk },
    };
    let opened = Checkpoint::open_in(&fs, &Source::Path(PathBuf::from(NAME)));
    let parsed = Header::parse_file(data);
    match (opened, parsed) {
        (Ok(ckpt), Ok(header)) => {
            assert_eq!(ckpt.len(), header.tensors().len());
            let shard = &ckpt.shards()[0];
            assert_eq!(shard.size(), data.len() as u64);
            assert_eq!(shard.data_start(), header.data_start());
            for (t, info) in ckpt.tensors().iter().zip(header.tensors()) {
                assert_eq!(
                    (&t.name, t.dtype, &t.shape),
                    (&info.name, info.dtype, &info.shape)
                );
                assert_eq!(t.range.start, header.data_start() + info.data.start);
                assert_eq!(t.range.len(), info.data.len());
                assert!(t.range.end <= data.len() as u64);
                assert_eq!(ckpt.find(&t.name), Some(t));
            }
        }
        (Err(Error::Header { file, source }), Err(e)) => {
            assert_eq!(file, Path::new(NAME));
            assert_eq!(source.to_string(), e.to_string());
        }
        (opened, parsed) => panic!("open_in gave {opened:?}, parse_file gave {parsed:?}"),
    }
});

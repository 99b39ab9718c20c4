//! Fuzz opening a checkpoint through an index: the index JSON is the input,
//! beside two fixed, valid shards in an in-memory file system. When it
//! opens, plan it with a geometry taken from the input and check the plan
//! covers every tensor byte once, in aligned extents inside the files.
#![no_main]

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weightlift_format::{Checkpoint, Dtype, FileAt, Fs, Source, TensorSpec, encode_header};
use weightlift_plan::{Geometry, Selection, plan};

const INDEX: &str = "m/model.safetensors.index.json";

/// The shards: `m/a.safetensors` holds x and y, `m/b.safetensors` holds z.
fn shards() -> &'static HashMap<PathBuf, Vec<u8>> {
    static SHARDS: OnceLock<HashMap<PathBuf, Vec<u8>>> = OnceLock::new();
    SHARDS.get_or_init(|| {
        let file = |specs: &[TensorSpec]| {
            let enc = encode_header(specs, None).expect("valid");
            let mut bytes = enc.bytes;
            bytes.extend((0..enc.data_len).map(|i| i as u8));
            bytes
        };
        HashMap::from([
            (
                PathBuf::from("m/a.safetensors"),
                file(&[
                    TensorSpec::new("x", Dtype::F32, [300]),
                    TensorSpec::new("y", Dtype::U8, [5]),
                ]),
            ),
            (
                PathBuf::from("m/b.safetensors"),
                file(&[TensorSpec::new("z", Dtype::BF16, [2, 700])]),
            ),
        ])
    })
}

struct Mem<'a>(&'a [u8]);

impl FileAt for Mem<'_> {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset).map_or(self.0.len(), |o| o.min(self.0.len()));
        let n = buf.len().min(self.0.len() - start);
        buf[..n].copy_from_slice(&self.0[start..start + n]);
        Ok(n)
    }
}

struct MemFs<'a> {
    index: &'a [u8],
}

impl Fs for MemFs<'_> {
    fn open(&self, path: &Path) -> io::Result<Box<dyn FileAt + '_>> {
        if path == Path::new(INDEX) {
            return Ok(Box::new(Mem(self.index)));
        }
        match shards().get(path) {
            Some(bytes) => Ok(Box::new(Mem(bytes))),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }

    fn is_dir(&self, path: &Path) -> io::Result<bool> {
        Ok(path == Path::new("m"))
    }

    fn list_dir(&self, _: &Path) -> io::Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&g, index)) = data.split_first() else {
        return;
    };
    let opened = Checkpoint::open_in(&MemFs { index }, &Source::Path(PathBuf::from(INDEX)));
    let ckpt = match opened {
        Ok(c) => c,
        Err(e) => {
            // Every error names a file of the checkpoint.
            let f = e.file();
            assert!(
                f == Path::new(INDEX) || shards().contains_key(f) || f.starts_with("m"),
                "{e}"
            );
            return;
        }
    };
    assert!(ckpt.len() <= 3 && !ckpt.is_empty());
    assert_eq!(ckpt.index_path(), Some(Path::new(INDEX)));
    let alignment = 1u64 << (g & 0x0f);
    let geometry = Geometry::new(alignment, alignment * u64::from(1 + (g >> 4)))
        .expect("valid geometry")
        .with_merge_gap(u64::from(g) * 37);
    let p = plan(&ckpt, &Selection::All, &geometry).expect("plans");
    let mut covered = vec![0u64; ckpt.len()];
    for (e, pieces) in p.iter() {
        let size = ckpt.shard(e.file).size();
        assert!(
            e.offset % alignment == 0 && e.len % alignment == 0 && e.len <= geometry.max_extent()
        );
        assert!(e.offset + e.len <= size.div_ceil(alignment) * alignment);
        for piece in pieces {
            let t = ckpt.tensor(piece.tensor);
            assert_eq!(
                e.offset + piece.extent_offset,
                t.range.start + piece.tensor_offset
            );
            covered[piece.tensor.index()] += piece.len;
        }
    }
    for (t, n) in ckpt.tensors().iter().zip(covered) {
        assert_eq!(n, t.len(), "{}", t.name);
    }
});

//! `model.safetensors.index.json`: which shard holds each tensor.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};

use crate::Error;
use crate::fs::{Fs, read_full_at};

/// The suffix of index file names.
pub(crate) const INDEX_SUFFIX: &str = ".safetensors.index.json";

/// The largest index file accepted. An index of 200,000 tensors is about
/// 20 MB; anything far beyond that is not an index.
pub const MAX_INDEX_LEN: u64 = 256 << 20;

/// The parts of an index file that locate tensors. Its `metadata` (such as
/// `total_size`) is informative and not used.
#[derive(Debug)]
pub(crate) struct IndexFile {
    /// Tensor name to shard file name, in the order written, without duplicates.
    pub(crate) weight_map: Vec<(String, String)>,
}

impl IndexFile {
    pub(crate) fn read(fs: &dyn Fs, path: &Path) -> Result<Self, Error> {
        let io = |source| Error::Io {
            file: path.to_path_buf(),
            source,
        };
        let file = fs.open(path).map_err(io)?;
        let size = file.size().map_err(io)?;
        if size > MAX_INDEX_LEN {
            return Err(Error::IndexTooLarge {
                file: path.to_path_buf(),
                size,
                max: MAX_INDEX_LEN,
            });
        }
        let mut buf = vec![0u8; size as usize];
        if !read_full_at(&*file, &mut buf, 0).map_err(io)? {
            return Err(Error::Changed {
                file: path.to_path_buf(),
            });
        }
        Self::parse(path, &buf)
    }

    pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<Self, Error> {
        #[derive(Deserialize)]
        struct Raw {
            weight_map: OrderedMap,
        }
        let raw: Raw = serde_json::from_slice(bytes).map_err(|source| Error::Index {
            file: path.to_path_buf(),
            source,
        })?;
        let weight_map = raw.weight_map.0;
        let mut seen: HashMap<&str, &str> = HashMap::with_capacity(weight_map.len());
        for (tensor, shard) in &weight_map {
            if let Some(first) = seen.insert(tensor, shard) {
                return Err(Error::DuplicateTensor {
                    tensor: tensor.clone(),
                    first: path.with_file_name(first),
                    second: path.with_file_name(shard),
                });
            }
        }
        Ok(IndexFile { weight_map })
    }
}

/// A JSON object of strings, in the order written, keeping repeated keys.
struct OrderedMap(Vec<(String, String)>);

impl<'de> Deserialize<'de> for OrderedMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object mapping tensor names to shard file names")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0).min(4096));
                while let Some(entry) = map.next_entry::<String, String>()? {
                    out.push(entry);
                }
                Ok(OrderedMap(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_tensor_in_weight_map_is_an_error() {
        let json = br#"{"metadata":{"total_size":8},"weight_map":{"a":"x.safetensors","a":"y.safetensors"}}"#;
        let err = IndexFile::parse(Path::new("/m/i.json"), json).unwrap_err();
        assert!(
            matches!(&err, Error::DuplicateTensor { tensor, first, second }
                if tensor == "a" && first.ends_with("x.safetensors") && second.ends_with("y.safetensors")),
            "{err}"
        );
    }

    #[test]
    fn non_string_shard_is_an_error() {
        let json = br#"{"weight_map":{"a":3}}"#;
        let err = IndexFile::parse(Path::new("i.json"), json).unwrap_err();
        assert!(matches!(err, Error::Index { .. }), "{err}");
    }

    #[test]
    fn missing_weight_map_is_an_error() {
        let err = IndexFile::parse(Path::new("i.json"), br#"{"metadata":{}}"#).unwrap_err();
        assert!(err.to_string().contains("weight_map"), "{err}");
    }
}

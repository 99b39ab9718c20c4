//! `model.safetensors.index.json`: which shard holds each tensor.

use std::borrow::Cow;
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

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
pub(crate) struct IndexFile<'a> {
    /// Tensor name to shard file name, in the order written. Strings borrow
    /// from the file's bytes unless they hold escapes. A name may repeat;
    /// the checkpoint's check against the headers reports it.
    pub(crate) weight_map: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

/// Read an index file's bytes, bounded by [`MAX_INDEX_LEN`].
pub(crate) fn read_index(fs: &dyn Fs, path: &Path) -> Result<Vec<u8>, Error> {
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
    Ok(buf)
}

impl<'a> IndexFile<'a> {
    pub(crate) fn parse(path: &Path, bytes: &'a [u8]) -> Result<Self, Error> {
        #[derive(Deserialize)]
        struct Raw<'a> {
            #[serde(borrow)]
            weight_map: OrderedMap<'a>,
        }
        let raw: Raw<'a> = serde_json::from_slice(bytes).map_err(|source| Error::Index {
            file: path.to_path_buf(),
            source,
        })?;
        Ok(IndexFile {
            weight_map: raw.weight_map.0,
        })
    }
}

/// A JSON object of strings, in the order written, keeping repeated keys.
struct OrderedMap<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

/// A JSON string, borrowed from the input when it has no escapes.
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for OrderedMap<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = OrderedMap<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object mapping tensor names to shard file names")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0).min(4096));
                while let Some((Str(k), Str(v))) = map.next_entry::<Str<'a>, Str<'a>>()? {
                    out.push((k, v));
                }
                Ok(OrderedMap(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_borrow_unless_escaped() {
        let json = br#"{"weight_map":{"a":"x.safetensors","b\u0041":"y.safetensors"}}"#;
        let index = IndexFile::parse(Path::new("i.json"), json).unwrap();
        assert!(matches!(index.weight_map[0].0, Cow::Borrowed("a")));
        assert_eq!(index.weight_map[1].0, "bA");
        assert!(matches!(
            index.weight_map[1].1,
            Cow::Borrowed("y.safetensors")
        ));
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

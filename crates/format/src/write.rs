//! Encoding safetensors headers, for writing files.

use std::collections::HashSet;

use crate::header::{MAX_HEADER_LEN, METADATA_KEY, Metadata, PREFIX_LEN, tensor_bytes};
use crate::{ByteRange, Dtype, HeaderError};

/// A tensor to describe in a header being written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// The tensor's name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions, outermost first.
    pub shape: Vec<u64>,
}

impl TensorSpec {
    /// A tensor called `name` of `dtype` and `shape`.
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: impl Into<Vec<u64>>) -> Self {
        Self {
            name: name.into(),
            dtype,
            shape: shape.into(),
        }
    }
}

/// A header ready to be written at the start of a file.
#[derive(Debug, Clone)]
pub struct EncodedHeader {
    /// The length prefix and the JSON, padded with spaces to a multiple of 8
    /// bytes so that the data section starts aligned (as the reference writer does).
    pub bytes: Vec<u8>,
    /// Each tensor's bytes relative to the data section, in the order given.
    pub ranges: Vec<ByteRange>,
    /// Length of the data section: the file is `bytes.len() + data_len` long.
    pub data_len: u64,
}

/// Encode a header for `tensors`, laid out in the order given, back to back.
///
/// Fails as the parser would on the result: a duplicate or reserved name, a
/// shape whose size overflows or does not fill whole bytes, or a header over
/// the format's size limit.
///
/// ```
/// use weightlift_format::{encode_header, Dtype, Header, TensorSpec};
///
/// let enc = encode_header(&[TensorSpec::new("w", Dtype::BF16, [2, 3])], None)?;
/// let mut file = enc.bytes.clone();
/// file.resize(file.len() + enc.data_len as usize, 0);
/// let header = Header::parse_file(&file)?;
/// assert_eq!(header.tensors()[0].shape, [2, 3]);
/// # Ok::<(), weightlift_format::HeaderError>(())
/// ```
pub fn encode_header(
    tensors: &[TensorSpec],
    metadata: Option<&Metadata>,
) -> Result<EncodedHeader, HeaderError> {
    let mut json = String::from("{");
    let mut first = true;
    let mut push_key = |json: &mut String, key: &str| {
        if !first {
            json.push(',');
        }
        first = false;
        push_str(json, key);
        json.push(':');
    };
    if let Some(m) = metadata {
        push_key(&mut json, METADATA_KEY);
        json.push('{');
        for (i, (k, v)) in m.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            push_str(&mut json, k);
            json.push(':');
            push_str(&mut json, v);
        }
        json.push('}');
    }
    let mut seen = HashSet::with_capacity(tensors.len());
    let mut ranges = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    for t in tensors {
        if t.name == METADATA_KEY {
            return Err(HeaderError::ReservedName);
        }
        if !seen.insert(t.name.as_str()) {
            return Err(HeaderError::DuplicateTensor {
                tensor: t.name.clone(),
            });
        }
        let len = tensor_bytes(&t.name, t.dtype, &t.shape)?;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| HeaderError::ShapeOverflow {
                tensor: t.name.clone(),
                shape: t.shape.clone(),
                dtype: t.dtype,
            })?;
        push_key(&mut json, &t.name);
        json.push_str("{\"dtype\":\"");
        json.push_str(t.dtype.as_str());
        json.push_str("\",\"shape\":[");
        for (i, d) in t.shape.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            json.push_str(&d.to_string());
        }
        json.push_str(&format!("],\"data_offsets\":[{offset},{end}]}}"));
        ranges.push(ByteRange::new(offset, end));
        offset = end;
    }
    json.push('}');
    let padded = json.len().next_multiple_of(8);
    if padded as u64 > MAX_HEADER_LEN {
        return Err(HeaderError::TooLarge {
            header_len: padded as u64,
            max: MAX_HEADER_LEN,
        });
    }
    let mut bytes = Vec::with_capacity(PREFIX_LEN + padded);
    bytes.extend_from_slice(&(padded as u64).to_le_bytes());
    bytes.extend_from_slice(json.as_bytes());
    bytes.resize(PREFIX_LEN + padded, b' ');
    Ok(EncodedHeader {
        bytes,
        ranges,
        data_len: offset,
    })
}

fn push_str(out: &mut String, s: &str) {
    // serde_json's escaping of a plain string cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

impl crate::Checkpoint {
    /// The checkpoint that shards described by their tensors (in file
    /// order) and metadata would make, written as [`encode_header`] writes
    /// them: pure, no file is read or written. For planning and
    /// scheduling without files, and for tests.
    pub fn described(
        shards: Vec<(std::path::PathBuf, Vec<TensorSpec>, Option<Metadata>)>,
    ) -> Result<crate::Checkpoint, crate::Error> {
        let mut headers = Vec::with_capacity(shards.len());
        for (path, tensors, metadata) in shards {
            let bad = |source| crate::Error::Header {
                file: path.clone(),
                source,
            };
            let enc = encode_header(&tensors, metadata.as_ref()).map_err(bad)?;
            let size = enc.bytes.len() as u64 + enc.data_len;
            let header = match crate::Header::parse(&enc.bytes, size).map_err(bad)? {
                crate::Parsed::Complete(h) => h,
                crate::Parsed::NeedMore { .. } => unreachable!("the whole header was given"),
            };
            headers.push((path, size, header));
        }
        crate::Checkpoint::from_headers(headers)
    }
}

//! Property tests with the reference `safetensors` crate as the oracle.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use safetensors::SafeTensors;
use safetensors::tensor::TensorView;
use weightlift_format::{Dtype, Header, HeaderError, Metadata, TensorSpec, encode_header};

fn dtype() -> impl Strategy<Value = Dtype> {
    proptest::sample::select(Dtype::ALL.to_vec())
}

/// Names with escapes, unicode, and the occasional near-miss of `__metadata__`.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9_.]{0,12}",
        "[a-zé\"\\\\/\\u{1F600} ]{1,6}",
        Just("__metadata".to_owned()),
    ]
}

/// A tensor spec whose size is a whole number of bytes.
fn spec() -> impl Strategy<Value = (Dtype, Vec<u64>)> {
    (dtype(), prop::collection::vec(0u64..6, 0..4)).prop_map(|(d, mut shape)| {
        let elements: u64 = shape.iter().product();
        if d.bytes_for(elements).is_none() {
            // Four more of everything fills whole bytes for 4- and 6-bit types.
            shape.push(4);
        }
        (d, shape)
    })
}

fn tensors() -> impl Strategy<Value = Vec<TensorSpec>> {
    prop::collection::btree_map(name(), spec(), 0..12)
        .prop_map(|m| {
            m.into_iter()
                .map(|(n, (d, s))| TensorSpec::new(n, d, s))
                .collect::<Vec<_>>()
        })
        .prop_shuffle()
}

fn metadata() -> impl Strategy<Value = Option<Metadata>> {
    prop::option::of(prop::collection::btree_map(
        "[a-z_ ]{0,8}",
        "[ -~é]{0,12}",
        0..4,
    ))
}

/// A whole file: header from `encode_header` and pseudo-random data.
fn file_from(specs: &[TensorSpec], metadata: Option<&Metadata>, seed: u8) -> Vec<u8> {
    let enc = encode_header(specs, metadata).expect("valid specs encode");
    let mut file = enc.bytes;
    let start = file.len();
    file.extend((0..enc.data_len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    assert_eq!(file.len() as u64, start as u64 + enc.data_len);
    file
}

fn ref_dtype(d: Dtype) -> safetensors::Dtype {
    serde_json::from_str(&format!("\"{}\"", d.as_str())).expect("reference knows every dtype")
}

/// Check that our header and the reference's reading of the same file agree
/// on every tensor (dtype, shape, bytes) and on the metadata.
fn assert_agrees(file: &[u8], ours: &Header) -> Result<(), TestCaseError> {
    let theirs = SafeTensors::deserialize(file)
        .map_err(|e| TestCaseError::fail(format!("reference rejects: {e:?}")))?;
    prop_assert_eq!(theirs.len(), ours.tensors().len());
    for t in ours.tensors() {
        let r = theirs
            .tensor(&t.name)
            .map_err(|e| TestCaseError::fail(format!("reference lacks {:?}: {e:?}", t.name)))?;
        prop_assert_eq!(r.dtype(), ref_dtype(t.dtype));
        let shape: Vec<u64> = r.shape().iter().map(|&d| d as u64).collect();
        prop_assert_eq!(&shape, &t.shape);
        let start = (ours.data_start() + t.data.start) as usize;
        let end = (ours.data_start() + t.data.end) as usize;
        prop_assert_eq!(r.data(), &file[start..end]);
    }
    let (n, ref_meta) = SafeTensors::read_metadata(file).expect("deserialized above");
    prop_assert_eq!(n as u64, ours.header_len());
    let ref_meta: Option<BTreeMap<String, String>> = ref_meta
        .metadata()
        .as_ref()
        .map(|m| m.clone().into_iter().collect());
    prop_assert_eq!(ref_meta.as_ref(), ours.metadata());
    Ok(())
}

proptest! {
    // 256 cases unless PROPTEST_CASES says otherwise.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    /// What we write, we and the reference read back identically.
    #[test]
    fn encoded_headers_round_trip(specs in tensors(), meta in metadata(), seed: u8) {
        let file = file_from(&specs, meta.as_ref(), seed);
        let header = Header::parse_file(&file).map_err(|e| TestCaseError::fail(e.to_string()))?;
        // Tensors come back in offset order, which is the order written.
        let back: Vec<TensorSpec> = header
            .tensors()
            .iter()
            .map(|t| TensorSpec::new(t.name.clone(), t.dtype, t.shape.clone()))
            .collect();
        // Empty tensors share offsets, so compare as sets of specs in offset order.
        let mut want = specs.clone();
        want.sort_by(|a, b| a.name.cmp(&b.name));
        let mut got = back;
        got.sort_by(|a, b| a.name.cmp(&b.name));
        prop_assert_eq!(got, want);
        prop_assert_eq!(header.metadata(), meta.as_ref());
        assert_agrees(&file, &header)?;
    }

    /// What the reference writes, we read exactly as the reference does.
    #[test]
    fn reference_files_parse_identically(specs in tensors(), meta in metadata(), seed: u8) {
        let datas: Vec<Vec<u8>> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let n = s.dtype.bytes_for(s.shape.iter().product()).expect("whole bytes") as usize;
                (0..n).map(|j| (j as u8) ^ (i as u8).wrapping_add(seed)).collect()
            })
            .collect();
        let views: Vec<(String, TensorView<'_>)> = specs
            .iter()
            .zip(&datas)
            .map(|(s, d)| {
                let shape = s.shape.iter().map(|&x| x as usize).collect();
                (s.name.clone(), TensorView::new(ref_dtype(s.dtype), shape, d).expect("valid view"))
            })
            .collect();
        let meta_map: Option<HashMap<String, String>> = meta.clone().map(|m| m.into_iter().collect());
        let file = safetensors::serialize(views, meta_map).expect("reference serializes");
        if SafeTensors::deserialize(&file).is_err() {
            // The reference writes `{},"__metadata__":{}}` for no tensors
            // and empty metadata, and rejects it itself: so must we.
            prop_assert!(Header::parse_file(&file).is_err());
            return Ok(());
        }
        let header = Header::parse_file(&file).map_err(|e| TestCaseError::fail(e.to_string()))?;
        assert_agrees(&file, &header)?;
    }

    /// After a random corruption we are at least as strict as the reference,
    /// and wherever we accept, we agree with it.
    #[test]
    fn corruptions_are_rejected_at_least_as_strictly(
        specs in tensors(),
        meta in metadata(),
        seed: u8,
        edit in corruption(),
    ) {
        let mut file = file_from(&specs, meta.as_ref(), seed);
        let header_end = 8 + u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
        edit.apply(&mut file, header_end);
        let theirs = SafeTensors::deserialize(&file);
        match Header::parse_file(&file) {
            Ok(ours) => {
                prop_assert!(theirs.is_ok(), "we accept what the reference rejects: {:?}", theirs.err());
                assert_agrees(&file, &ours)?;
            }
            // The two rules we add to the reference's.
            Err(HeaderError::DuplicateTensor { .. } | HeaderError::NotAnObject { .. }) => {}
            Err(e) => prop_assert!(theirs.is_err(), "we reject ({e}) what the reference accepts"),
        }
    }
}

/// A random corruption of a valid file.
#[derive(Debug, Clone)]
enum Corruption {
    /// Set one byte, anywhere in the header (prefix included).
    SetHeaderByte { at: prop::sample::Index, value: u8 },
    /// Replace one ASCII digit of the header JSON with another.
    Digit { at: prop::sample::Index, digit: u8 },
    /// Cut the file short.
    Truncate { at: prop::sample::Index },
    /// Append bytes.
    Append { n: u8 },
    /// Add `delta` to the header length prefix.
    Prefix { delta: i8 },
    /// Duplicate a region of the header JSON inside itself.
    Splice {
        from: prop::sample::Index,
        len: u8,
        to: prop::sample::Index,
    },
}

fn corruption() -> impl Strategy<Value = Corruption> {
    prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>())
            .prop_map(|(at, value)| Corruption::SetHeaderByte { at, value }),
        (any::<prop::sample::Index>(), 0u8..10)
            .prop_map(|(at, digit)| Corruption::Digit { at, digit }),
        any::<prop::sample::Index>().prop_map(|at| Corruption::Truncate { at }),
        (1u8..=255).prop_map(|n| Corruption::Append { n }),
        any::<i8>().prop_map(|delta| Corruption::Prefix { delta }),
        (
            any::<prop::sample::Index>(),
            1u8..40,
            any::<prop::sample::Index>()
        )
            .prop_map(|(from, len, to)| Corruption::Splice { from, len, to }),
    ]
}

impl Corruption {
    fn apply(&self, file: &mut Vec<u8>, header_end: usize) {
        match self {
            Corruption::SetHeaderByte { at, value } => file[at.index(header_end)] = *value,
            Corruption::Digit { at, digit } => {
                let digits: Vec<usize> = (8..header_end)
                    .filter(|&i| file[i].is_ascii_digit())
                    .collect();
                if !digits.is_empty() {
                    file[digits[at.index(digits.len())]] = b'0' + digit;
                }
            }
            Corruption::Truncate { at } => file.truncate(at.index(file.len())),
            Corruption::Append { n } => file.extend(std::iter::repeat_n(0xAB, *n as usize)),
            Corruption::Prefix { delta } => {
                let n = u64::from_le_bytes(file[..8].try_into().unwrap());
                file[..8].copy_from_slice(&n.wrapping_add_signed(i64::from(*delta)).to_le_bytes());
            }
            Corruption::Splice { from, len, to } => {
                let json = 8..header_end;
                let from = json.start + from.index(json.len());
                let end = (from + *len as usize).min(header_end);
                let chunk = file[from..end].to_vec();
                let to = json.start + to.index(json.len());
                file.splice(to..to, chunk);
            }
        }
    }
}

//! Element types of the safetensors format.

use std::fmt;
use std::str::FromStr;

/// The element type of a tensor, as spelled in a safetensors header.
///
/// Every dtype the format defines is here, with its width in bits. Parsing a
/// name that is not one of them is an error ([`UnknownDtype`]); there is no
/// fallback type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Dtype {
    /// Boolean, one byte per element.
    Bool,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 16-bit integer.
    U16,
    /// Signed 16-bit integer.
    I16,
    /// IEEE 754 half precision.
    F16,
    /// bfloat16.
    BF16,
    /// Unsigned 32-bit integer.
    U32,
    /// Signed 32-bit integer.
    I32,
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 double precision.
    F64,
    /// Unsigned 64-bit integer.
    U64,
    /// Signed 64-bit integer.
    I64,
    /// Complex number made of two `F32` parts.
    C64,
    /// FP8 with 4 exponent and 3 mantissa bits (OCP "E4M3FN").
    F8E4M3,
    /// FP8 with 5 exponent and 2 mantissa bits.
    F8E5M2,
    /// FP8 exponent-only scale type of the OCP microscaling formats.
    F8E8M0,
    /// FP8 E4M3, finite with unsigned zero (AMD "FNUZ").
    F8E4M3Fnuz,
    /// FP8 E5M2, finite with unsigned zero (AMD "FNUZ").
    F8E5M2Fnuz,
    /// 6-bit float with 2 exponent and 3 mantissa bits (OCP MXFP6).
    F6E2M3,
    /// 6-bit float with 3 exponent and 2 mantissa bits (OCP MXFP6).
    F6E3M2,
    /// 4-bit float, E2M1 (OCP MXFP4).
    F4,
}

impl Dtype {
    /// Every dtype, in the order of the format's documentation.
    pub const ALL: [Dtype; 22] = [
        Dtype::Bool,
        Dtype::U8,
        Dtype::I8,
        Dtype::U16,
        Dtype::I16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::U32,
        Dtype::I32,
        Dtype::F32,
        Dtype::F64,
        Dtype::U64,
        Dtype::I64,
        Dtype::C64,
        Dtype::F8E4M3,
        Dtype::F8E5M2,
        Dtype::F8E8M0,
        Dtype::F8E4M3Fnuz,
        Dtype::F8E5M2Fnuz,
        Dtype::F6E2M3,
        Dtype::F6E3M2,
        Dtype::F4,
    ];

    /// Width of one element in bits (4, 6, 8, 16, 32 or 64).
    pub const fn bits(self) -> u32 {
        match self {
            Dtype::F4 => 4,
            Dtype::F6E2M3 | Dtype::F6E3M2 => 6,
            Dtype::Bool
            | Dtype::U8
            | Dtype::I8
            | Dtype::F8E4M3
            | Dtype::F8E5M2
            | Dtype::F8E8M0
            | Dtype::F8E4M3Fnuz
            | Dtype::F8E5M2Fnuz => 8,
            Dtype::U16 | Dtype::I16 | Dtype::F16 | Dtype::BF16 => 16,
            Dtype::U32 | Dtype::I32 | Dtype::F32 => 32,
            Dtype::F64 | Dtype::U64 | Dtype::I64 | Dtype::C64 => 64,
        }
    }

    /// The name used in safetensors headers, such as `"BF16"` or `"F8_E4M3"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::U16 => "U16",
            Dtype::I16 => "I16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::U32 => "U32",
            Dtype::I32 => "I32",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::U64 => "U64",
            Dtype::I64 => "I64",
            Dtype::C64 => "C64",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E8M0 => "F8_E8M0",
            Dtype::F8E4M3Fnuz => "F8_E4M3FNUZ",
            Dtype::F8E5M2Fnuz => "F8_E5M2FNUZ",
            Dtype::F6E2M3 => "F6_E2M3",
            Dtype::F6E3M2 => "F6_E3M2",
            Dtype::F4 => "F4",
        }
    }

    /// Number of bytes that `elements` elements occupy, or `None` when the
    /// count overflows `u64` or does not fill a whole number of bytes.
    pub const fn bytes_for(self, elements: u64) -> Option<u64> {
        match elements.checked_mul(self.bits() as u64) {
            Some(bits) if bits % 8 == 0 => Some(bits / 8),
            _ => None,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A dtype name that the safetensors format does not define.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownDtype(pub String);

impl fmt::Display for UnknownDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown dtype {:?}", self.0)
    }
}

impl std::error::Error for UnknownDtype {}

impl FromStr for Dtype {
    type Err = UnknownDtype;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dtype::ALL
            .iter()
            .copied()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| UnknownDtype(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in Dtype::ALL {
            assert_eq!(d.as_str().parse::<Dtype>(), Ok(d));
        }
    }

    #[test]
    fn unknown_names_are_rejected_not_defaulted() {
        for bad in ["", "f32", "F8", "BFLOAT16", "F32 ", "C128"] {
            assert_eq!(bad.parse::<Dtype>(), Err(UnknownDtype(bad.to_owned())));
        }
    }

    #[test]
    fn sub_byte_counts_must_fill_bytes() {
        assert_eq!(Dtype::F4.bytes_for(3), None);
        assert_eq!(Dtype::F4.bytes_for(4), Some(2));
        assert_eq!(Dtype::F6E2M3.bytes_for(4), Some(3));
        assert_eq!(Dtype::F6E3M2.bytes_for(2), None);
        assert_eq!(Dtype::C64.bytes_for(3), Some(24));
        assert_eq!(Dtype::F64.bytes_for(u64::MAX), None);
    }

    #[test]
    fn widths_match_the_reference_library() {
        use safetensors::Dtype as R;
        let reference = |d: Dtype| -> R {
            serde_json::from_str(&format!("\"{}\"", d.as_str())).expect("reference knows it")
        };
        for d in Dtype::ALL {
            assert_eq!(d.bits() as usize, reference(d).bitsize(), "{d}");
        }
    }
}

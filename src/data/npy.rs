//! The header of a NumPy `.npy` file (format versions 1, 2 and 3), as `np.save` writes it: the
//! magic `\x93NUMPY`, a version, the header's length, then a Python dict literal such as
//! `{'descr': '<u2', 'fortran_order': False, 'shape': (1000,), }` padded with spaces, and the raw
//! array right after it. Only what a reader of a flat integer array needs is parsed: the element
//! type and the shape; anything else in the dict is ignored.
use anyhow::Result;
use std::path::Path;

/// An integer element type as stored: its size in bytes, signedness and byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntType {
    pub bytes: usize,
    pub signed: bool,
    pub big_endian: bool,
}

impl IntType {
    pub const U16: IntType = IntType {
        bytes: 2,
        signed: false,
        big_endian: false,
    };
    pub const U32: IntType = IntType {
        bytes: 4,
        signed: false,
        big_endian: false,
    };

    /// The value of one element stored in `b` (exactly `self.bytes` long), widened to i128 so
    /// every 64-bit value, signed or not, is kept as it is.
    pub fn decode(&self, b: &[u8]) -> i128 {
        let mut le = [0u8; 8];
        le[..self.bytes].copy_from_slice(b);
        if self.big_endian {
            le[..self.bytes].reverse();
        }
        let raw = u64::from_le_bytes(le);
        if self.signed {
            // Sign-extend from the element's width.
            let shift = 64 - 8 * self.bytes as u32;
            (((raw << shift) as i64) >> shift) as i128
        } else {
            raw as i128
        }
    }

    /// NumPy's name for the type (`uint16`, `int32`, ...).
    pub fn name(&self) -> String {
        format!(
            "{}int{}{}",
            if self.signed { "" } else { "u" },
            8 * self.bytes,
            if self.big_endian && self.bytes > 1 {
                " (big-endian)"
            } else {
                ""
            }
        )
    }
}

/// What the header says about the array after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Byte offset of the array's first element.
    pub data_offset: u64,
    /// The dtype as written (`<u2`), for messages.
    pub descr: String,
    /// `None` when the dtype is not an integer type.
    pub int: Option<IntType>,
    pub shape: Vec<usize>,
    pub fortran_order: bool,
}

/// Parses the header at the start of `head` (the file's first bytes: at least 10, and the whole
/// header for it to succeed; 64 KiB covers every header `np.save` writes for a plain array).
pub fn parse_header(path: &Path, head: &[u8]) -> Result<Header> {
    let bad = |why: &str| {
        crate::error::input(format!(
            "{}: not a readable .npy file: {why}",
            path.display()
        ))
    };
    if head.len() < 10 || &head[..6] != b"\x93NUMPY" {
        return Err(bad("it does not start with the .npy magic \\x93NUMPY"));
    }
    let (len, start) = match head[6] {
        1 => (u16::from_le_bytes([head[8], head[9]]) as usize, 10usize),
        2 | 3 if head.len() >= 12 => (
            u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize,
            12,
        ),
        v => {
            return Err(bad(&format!(
                "format version {v}.{} is not 1, 2 or 3",
                head[7]
            )))
        }
    };
    let end = start
        .checked_add(len)
        .filter(|&e| e <= head.len())
        .ok_or_else(|| {
            bad(&format!(
                "its header of {len} bytes runs past the file's end"
            ))
        })?;
    let dict = std::str::from_utf8(&head[start..end])
        .map_err(|_| bad("its header is not text"))?
        .trim();
    let descr = value_of(dict, "descr").ok_or_else(|| bad("its header has no 'descr'"))?;
    let descr = match descr.strip_prefix('\'').and_then(|d| d.split_once('\'')) {
        Some((d, _)) => d.to_string(),
        // A list: a structured dtype, kept whole for the message.
        None => descr
            .split_once(", 'fortran_order'")
            .map_or(descr, |(d, _)| d)
            .to_string(),
    };
    let fortran =
        value_of(dict, "fortran_order").ok_or_else(|| bad("its header has no 'fortran_order'"))?;
    let shape_text = value_of(dict, "shape").ok_or_else(|| bad("its header has no 'shape'"))?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split_once(')'))
        .map(|(s, _)| s)
        .ok_or_else(|| bad("its 'shape' is not a tuple"))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            bad(&format!(
                "its shape ({inner}) is not a tuple of whole numbers"
            ))
        })?;
    Ok(Header {
        data_offset: end as u64,
        int: int_type(&descr),
        descr,
        shape,
        fortran_order: fortran.starts_with("True"),
    })
}

/// The text after `'key':` in a dict literal, up to the end of the dict.
fn value_of<'a>(dict: &'a str, key: &str) -> Option<&'a str> {
    let quoted = [format!("'{key}'"), format!("\"{key}\"")];
    let at = quoted
        .iter()
        .find_map(|q| dict.find(q.as_str()).map(|i| i + q.len()))?;
    Some(dict[at..].trim_start().strip_prefix(':')?.trim_start())
}

/// `<u2`, `|i1`, `>i8`, ...: an integer dtype; anything else (floats, bools, strings, objects,
/// structured types) is `None`.
fn int_type(descr: &str) -> Option<IntType> {
    let mut cs = descr.chars();
    let order = cs.next()?;
    let (kind, size) = (cs.next()?, cs.as_str());
    let bytes: usize = size.parse().ok()?;
    if !matches!(bytes, 1 | 2 | 4 | 8) || !matches!(order, '<' | '>' | '|' | '=') {
        return None;
    }
    let signed = match kind {
        'i' => true,
        'u' => false,
        _ => return None,
    };
    Some(IntType {
        bytes,
        signed,
        // '=' is the writer's native order; files are written on little-endian machines here.
        big_endian: order == '>',
    })
}

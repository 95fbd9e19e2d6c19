//! The frame around a learning object's snapshot bytes (the label join, progressive metrics):
//! a 4-byte magic, the format version (u32 LE), the CRC-32 of the body (u32 LE), the body's
//! length (u64 LE), then the body (bincode). One writer and one reader for every such
//! snapshot, so each refuses foreign, newer, truncated or corrupted bytes the same way.

use serde::Serialize;

use crate::error::{Error, Result};

/// `v` serialized and framed under `magic` and `version`; `bad` makes the typed error.
pub(crate) fn seal<T: Serialize>(
    magic: &[u8; 4],
    version: u32,
    v: &T,
    bad: fn(String) -> Error,
) -> Result<Vec<u8>> {
    let body = bincode::serialize(v).map_err(|e| bad(format!("{e}")))?;
    let mut out = Vec::with_capacity(body.len() + 20);
    out.extend_from_slice(magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// The version and body of bytes framed by [`seal`] under `magic`, when the version is in
/// `oldest..=newest` and the length and checksum match. `what` names the expected kind in the
/// error for bytes of another kind ("a label join snapshot").
pub(crate) fn unseal<'a>(
    magic: &[u8; 4],
    bytes: &'a [u8],
    (oldest, newest): (u32, u32),
    what: &str,
    bad: fn(String) -> Error,
) -> Result<(u32, &'a [u8])> {
    if bytes.len() < 20 || &bytes[..4] != magic {
        return Err(bad(format!("not {what}")));
    }
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let version = word(4);
    if version < oldest || version > newest {
        return Err(bad(format!(
            "format version {version}; this build reads {newest}{}",
            if version > newest {
                ": upgrade rtml"
            } else {
                ""
            }
        )));
    }
    let crc = word(8);
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[12..20]);
    let body = &bytes[20..];
    if u64::from_le_bytes(len) != body.len() as u64 || crc32fast::hash(body) != crc {
        return Err(bad(
            "truncated or corrupted (length or checksum mismatch)".into()
        ));
    }
    Ok((version, body))
}

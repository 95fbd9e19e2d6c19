//! Composite entity keys: the one canonical encoding of a key made of several parts.
//!
//! A feature set keyed by several columns (`entity=["driver_id", "zone"]`) holds one string key
//! per distinct tuple of parts: every path that turns input rows into keys (Arrow tables, row
//! dicts, Python tuples, the spine) encodes the parts here, so the online state, snapshots,
//! shared-store key names and the backfill all see the same key for the same tuple.
//!
//! Encoding, part by part in the entity's column order: an integer part is `i<decimal>;`, a
//! string part is `s<byte length>:<bytes>`. So `("d7", 3)` is `s2:d7i3;`. Every part's extent
//! is known from its own bytes, so distinct tuples never share an encoding (`("ab", "c")` is
//! `s2:abs1:c`, `("a", "bc")` is `s1:as2:bc`), and an integer part never equals a string one.
//!
//! The key kind (which parts are integers) is part of the encoding: an engine fixes it on its
//! first key, as it fixes integer-or-string for a single key.

use std::fmt::Write;

use smallvec::SmallVec;

use crate::input::KeyRef;

/// At most this many parts in a composite key.
pub const MAX_PARTS: usize = 16;

/// Kind of a single integer key.
pub const KIND_INT: u64 = 1;
/// Kind of a single string key.
pub const KIND_STR: u64 = 2;

/// Kind of a composite key whose integer parts are the set bits of `int_mask` (bit j: part j).
#[inline]
pub fn composite_kind(int_mask: u64) -> u64 {
    3 + int_mask
}

/// Kind of a single key.
#[inline]
pub fn single_kind(key: KeyRef<'_>) -> u64 {
    if key.is_int() {
        KIND_INT
    } else {
        KIND_STR
    }
}

/// Append one part to an encoded key.
#[inline]
pub fn push_part(out: &mut String, part: KeyRef<'_>) {
    match part {
        KeyRef::Int(i) => {
            // cannot fail: writing to a String
            let _ = write!(out, "i{i};");
        }
        KeyRef::Str(s) => {
            let _ = write!(out, "s{}:", s.len());
            out.push_str(s);
        }
    }
}

/// The encoding of a tuple of parts.
pub fn encode(parts: &[KeyRef<'_>]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| 4 + part_len(p)).sum());
    for p in parts {
        push_part(&mut out, *p);
    }
    out
}

fn part_len(p: &KeyRef<'_>) -> usize {
    match p {
        KeyRef::Int(_) => 20,
        KeyRef::Str(s) => s.len() + 4,
    }
}

/// The parts of an encoded key (`None`: not an encoding).
pub fn decode(s: &str) -> Option<SmallVec<[KeyRef<'_>; 4]>> {
    let mut out = SmallVec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (part, tail) = next_part(rest)?;
        out.push(part);
        rest = tail;
    }
    Some(out)
}

/// The first part of `s` and the rest.
fn next_part(s: &str) -> Option<(KeyRef<'_>, &str)> {
    let tag = s.as_bytes().first()?;
    let body = s.get(1..)?;
    match tag {
        b'i' => {
            let (digits, rest) = body.split_once(';')?;
            Some((KeyRef::Int(digits.parse().ok()?), rest))
        }
        b's' => {
            let (len, rest) = body.split_once(':')?;
            if len.len() > 1 && len.starts_with('0') {
                return None;
            }
            let len: usize = len.parse().ok()?;
            Some((KeyRef::Str(rest.get(..len)?), rest.get(len..)?))
        }
        _ => None,
    }
}

/// The kind of an encoded composite key ([`composite_kind`]); 0 for a string that is not one.
pub fn kind_of_encoded(s: &str) -> u64 {
    let mut mask = 0u64;
    let mut rest = s;
    let mut j = 0;
    while !rest.is_empty() {
        let Some((part, tail)) = next_part(rest) else {
            return 0;
        };
        if part.is_int() && j < 64 {
            mask |= 1 << j;
        }
        j += 1;
        rest = tail;
    }
    composite_kind(mask)
}

/// The kind of a key of an entity with `parts` columns (1: a single key).
#[inline]
pub fn kind_of(key: KeyRef<'_>, parts: usize) -> u64 {
    match key {
        KeyRef::Str(s) if parts > 1 => kind_of_encoded(s),
        k => single_kind(k),
    }
}

/// The kind of a composite key built from parts of these kinds (true: integer).
pub fn kind_of_parts(is_int: impl IntoIterator<Item = bool>) -> u64 {
    let mask = is_int
        .into_iter()
        .enumerate()
        .filter(|(j, int)| *int && *j < 64)
        .fold(0u64, |m, (j, _)| m | (1 << j));
    composite_kind(mask)
}

/// A kind as people read it: "integer", "string", or `(driver_id: string, zone: integer)`.
pub fn describe_kind(kind: u64, columns: &[String]) -> String {
    match kind {
        KIND_INT if columns.len() <= 1 => "integer".into(),
        KIND_STR if columns.len() <= 1 => "string".into(),
        k => {
            let mask = k.saturating_sub(3);
            let parts: Vec<String> = columns
                .iter()
                .enumerate()
                .map(|(j, c)| {
                    let int = j < 64 && mask & (1 << j) != 0;
                    format!("{c}: {}", if int { "integer" } else { "string" })
                })
                .collect();
            format!("({})", parts.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let cases: Vec<Vec<KeyRef<'_>>> = vec![
            vec![KeyRef::Str("d7"), KeyRef::Int(3)],
            vec![KeyRef::Int(i64::MIN), KeyRef::Int(i64::MAX), KeyRef::Int(0)],
            vec![KeyRef::Str(""), KeyRef::Str("")],
            vec![
                KeyRef::Str("a;b:c"),
                KeyRef::Str("i3;"),
                KeyRef::Str("s1:x"),
            ],
            vec![KeyRef::Str("ünïcødé 🚗"), KeyRef::Int(-1)],
        ];
        for parts in cases {
            let e = encode(&parts);
            assert_eq!(decode(&e).unwrap().as_slice(), parts.as_slice(), "{e}");
            let mask = parts
                .iter()
                .enumerate()
                .filter(|(_, p)| p.is_int())
                .fold(0, |m, (j, _)| m | (1 << j));
            assert_eq!(kind_of_encoded(&e), composite_kind(mask));
            assert_eq!(
                kind_of_parts(parts.iter().map(|p| p.is_int())),
                composite_kind(mask)
            );
        }
        assert_eq!(encode(&[KeyRef::Str("d7"), KeyRef::Int(3)]), "s2:d7i3;");
    }

    #[test]
    fn no_collisions() {
        let a = encode(&[KeyRef::Str("ab"), KeyRef::Str("c")]);
        let b = encode(&[KeyRef::Str("a"), KeyRef::Str("bc")]);
        assert_ne!(a, b);
        // integer and string parts never meet
        assert_ne!(
            encode(&[KeyRef::Int(1), KeyRef::Str("x")]),
            encode(&[KeyRef::Str("1"), KeyRef::Str("x")])
        );
        // the order of the parts matters
        assert_ne!(
            encode(&[KeyRef::Str("a"), KeyRef::Str("b")]),
            encode(&[KeyRef::Str("b"), KeyRef::Str("a")])
        );
        // exhaustive over short strings of a small alphabet, the separators included
        let alphabet = ["", "a", "s", "i", ":", ";", "1", "s1:", "a:b", "i1;", "1:"];
        let mut seen = std::collections::HashMap::new();
        for x in alphabet {
            for y in alphabet {
                for z in [KeyRef::Int(1), KeyRef::Int(-12), KeyRef::Str("1")] {
                    let parts = vec![KeyRef::Str(x), KeyRef::Str(y), z];
                    let e = encode(&parts);
                    if let Some(prev) = seen.insert(e.clone(), parts.clone()) {
                        assert_eq!(prev, parts, "collision on {e}");
                    }
                }
            }
        }
    }

    #[test]
    fn stable() {
        // The encoding is part of stored state (snapshots, shared-store key names): fixed bytes.
        assert_eq!(
            encode(&[KeyRef::Str("ab"), KeyRef::Int(-5), KeyRef::Str("")]),
            "s2:abi-5;s0:"
        );
        let mut keys: Vec<String> = (0..5)
            .map(|i| encode(&[KeyRef::Int(i), KeyRef::Str("z")]))
            .collect();
        let again = keys.clone();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), again.len());
    }

    #[test]
    fn rejects_non_encodings() {
        for s in ["x", "i12", "s3:ab", "s01:a", "i;", "s:"] {
            assert!(decode(s).is_none(), "{s}");
            assert_eq!(kind_of_encoded(s), 0, "{s}");
        }
        assert_eq!(decode("").unwrap().len(), 0);
    }

    #[test]
    fn describe() {
        let cols = vec!["driver_id".to_string(), "zone".to_string()];
        assert_eq!(
            describe_kind(composite_kind(2), &cols),
            "(driver_id: string, zone: integer)"
        );
        assert_eq!(describe_kind(KIND_INT, &cols[..1]), "integer");
    }
}

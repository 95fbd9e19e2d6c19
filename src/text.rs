//! The strings behind the value words of string columns (`FeatureSet(string_columns=...)`).
//!
//! A string value is stored in an event row as its 64-bit identity
//! ([`crate::input::string_identity`], the word `count` / `distinct_count` already use); the
//! bytes live once in a [`Texts`] table: one per input (filled while the input is read) and one
//! per key state (the strings its buffered rows hold, swept when rows leave the buffer), so a
//! key's state, alone, answers `first` / `last` / `min` / `max` of strings, and its snapshot
//! and published value carry them.
//!
//! Order: strings compare by their UTF-8 bytes (= Unicode code point order).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::input::row::NULL;

/// Identity word -> string. A `BTreeMap`, so a state's encoding does not depend on insertion
/// order or on a hasher's seed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Texts(BTreeMap<u64, Box<str>>);

impl Texts {
    /// The string of `word` (`None`: null, or a word this table does not hold).
    #[inline]
    pub fn get(&self, word: u64) -> Option<&str> {
        self.0.get(&word).map(|s| &**s)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// Remember `s` under its identity `word`. Two different strings with the same 64-bit
    /// identity are refused (`column` names the column): ordering them by identity would be a
    /// silent wrong answer. (The chance among n distinct strings is about n^2 / 2^65.)
    #[inline]
    pub fn note(&mut self, word: u64, s: &str, column: &str) -> Result<()> {
        match self.0.get(&word) {
            Some(held) if &**held == s => Ok(()),
            Some(held) => Err(collision(column, held, s)),
            None => {
                self.0.insert(word, s.into());
                Ok(())
            }
        }
    }

    /// Fold another table in (the same checks as [`Self::note`]).
    pub fn extend(&mut self, other: Texts, column: &str) -> Result<()> {
        if self.0.is_empty() {
            self.0 = other.0;
            return Ok(());
        }
        for (w, s) in other.0 {
            match self.0.get(&w) {
                Some(held) if *held == s => {}
                Some(held) => return Err(collision(column, held, &s)),
                None => {
                    self.0.insert(w, s);
                }
            }
        }
        Ok(())
    }

    /// Copy the string of `word` from `from` unless held already (a key state taking the
    /// strings of the rows it stores). Null and unknown words are ignored.
    #[inline]
    pub fn take_from(&mut self, word: u64, from: &Texts) {
        if word == NULL || self.0.contains_key(&word) {
            return;
        }
        if let Some(s) = from.0.get(&word) {
            self.0.insert(word, s.clone());
        }
    }

    /// Keep only the words for which `live` is true.
    pub fn retain(&mut self, mut live: impl FnMut(u64) -> bool) {
        self.0.retain(|w, _| live(*w));
    }

    /// Order of two words by their strings' bytes (a word without a string sorts first; never
    /// happens for rows of a state, which holds every string of its rows).
    #[inline]
    pub fn cmp(&self, a: u64, b: u64) -> Ordering {
        if a == b {
            return Ordering::Equal;
        }
        self.get(a)
            .map(str::as_bytes)
            .cmp(&self.get(b).map(str::as_bytes))
    }

    /// Heap bytes held (approximate: entries and string bytes).
    pub fn bytes(&self) -> usize {
        self.0.values().map(|s| 40 + s.len()).sum()
    }
}

fn collision(column: &str, a: &str, b: &str) -> Error {
    Error::schema(
        column,
        format!(
            "the strings {a:?} and {b:?} have the same 64-bit identity (xxh3-64); rtml cannot order them: please report this"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::string_identity;

    #[test]
    fn order_is_by_utf8_bytes_and_collisions_are_refused() {
        let mut t = Texts::default();
        for s in ["b", "a", "ab", "é", "Z", ""] {
            t.note(string_identity(s), s, "c").unwrap();
        }
        let mut words: Vec<u64> = ["b", "a", "ab", "é", "Z", ""]
            .iter()
            .map(|s| string_identity(s))
            .collect();
        words.sort_by(|a, b| t.cmp(*a, *b));
        let got: Vec<&str> = words.iter().map(|w| t.get(*w).unwrap()).collect();
        assert_eq!(got, ["", "Z", "a", "ab", "b", "é"]);
        // the same string again is fine; another string under a held word is refused
        t.note(string_identity("a"), "a", "c").unwrap();
        let e = t.note(string_identity("a"), "not a", "c").unwrap_err();
        assert!(e.to_string().contains("same 64-bit identity"), "{e}");
        let mut other = Texts::default();
        other.note(string_identity("b"), "B?", "c").unwrap();
        assert!(t.clone().extend(other, "c").is_err());
    }
}

//! The `version` field of a versioned JSON document (model, monitor reference, monitor state):
//! one rule for every reader. A document from a newer rtml is refused with a hint to upgrade;
//! a missing, zero or non-integer version is refused too. Each caller turns the message into
//! its own error kind (a spec error for a document a user hands over, a snapshot error for a
//! checkpoint).

/// The version of `doc` (`what` names the document in messages), if this rtml reads it: an
/// integer from 1 to `max`.
pub fn check(doc: &serde_json::Value, what: &str, max: u32) -> Result<u32, String> {
    match doc.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v > u64::from(max) => Err(format!(
            "{what} version {v} is newer than this rtml reads ({max}): upgrade rtml"
        )),
        Some(v) if v >= 1 => Ok(v as u32),
        other => Err(format!(
            "{what}: expected a version number 1..={max}, got {other:?}"
        )),
    }
}

/// `doc` as JSON text (`what` names the document in the error). The documents are derived
/// structs of numbers, strings and lists, which serde_json always writes; were one refused, the
/// caller gets a typed error naming it, never an empty or partial document.
pub fn write<T: serde::Serialize>(doc: &T, what: &str) -> crate::error::Result<String> {
    serde_json::to_string(doc)
        .map_err(|e| crate::error::Error::spec(what, format!("cannot be written as JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::check;
    use serde_json::json;

    #[test]
    fn accepts_known_versions_and_refuses_the_rest() {
        assert_eq!(check(&json!({"version": 1}), "model document", 2), Ok(1));
        assert_eq!(check(&json!({"version": 2}), "model document", 2), Ok(2));
        let newer = check(&json!({"version": 3}), "model document", 2).unwrap_err();
        assert!(
            newer.contains("model document version 3 is newer") && newer.contains("upgrade"),
            "{newer}"
        );
        for bad in [
            json!({}),
            json!({"version": 0}),
            json!({"version": "1"}),
            json!({"version": 1.5}),
        ] {
            let e = check(&bad, "reference document", 1).unwrap_err();
            assert!(e.contains("expected a version number 1..=1"), "{e}");
        }
    }
}

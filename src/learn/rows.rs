//! Input checks shared by the online learners ([`super::linear::Linear`],
//! [`super::softmax::Softmax`]): one feature vector, and a batch of vectors laid out row after
//! row with one label per row. Each learner checks its own labels; the shapes and the
//! finiteness of features are checked here, with the same messages for every learner.

use crate::error::{Error, Result};

/// `what`, prefixed by the row of a batch it is about (`None`: a single vector).
pub(crate) fn at(row: Option<usize>, what: String) -> String {
    match row {
        Some(r) => format!("row {r}: {what}"),
        None => what,
    }
}

/// Check one feature vector: `n_features` values, all finite. `row`: its index in a batch.
pub(crate) fn check_x(n_features: usize, x: &[f64], row: Option<usize>) -> Result<()> {
    if x.len() != n_features {
        return Err(Error::schema(
            "x",
            at(
                row,
                format!(
                    "expected a vector of {} features, got {}",
                    n_features,
                    x.len()
                ),
            ),
        ));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::schema(
            format!("x[{i}]"),
            at(row, format!("feature values must be finite, got {}", x[i])),
        ));
    }
    Ok(())
}

/// How many rows a `learn_many` batch holds: `xs` cut into vectors of `n_features` when it
/// divides evenly, else the label count (the shape check then names the mismatch).
pub(crate) fn batch_rows(n_features: usize, xs: &[f64], labels: usize) -> usize {
    if n_features > 0 && xs.len() % n_features == 0 {
        xs.len() / n_features
    } else {
        labels
    }
}

/// Check a whole batch before anything is learned: `rows` vectors of `n_features` in `xs`,
/// one label per row in `ys` (when given), each vector by [`check_x`] and each label by
/// `check_y` (the learner's own rule).
pub(crate) fn check_batch<Y: Copy>(
    n_features: usize,
    xs: &[f64],
    rows: usize,
    ys: Option<&[Y]>,
    mut check_y: impl FnMut(Y, Option<usize>) -> Result<()>,
) -> Result<()> {
    let k = n_features;
    if xs.len() != rows * k {
        return Err(Error::schema(
            "x",
            format!(
                "expected {rows} rows of {k} features ({} values), got {} values",
                rows * k,
                xs.len()
            ),
        ));
    }
    if let Some(ys) = ys {
        if ys.len() != rows {
            return Err(Error::schema(
                "y",
                format!("expected {rows} labels (one per row), got {}", ys.len()),
            ));
        }
    }
    for r in 0..rows {
        check_x(k, &xs[r * k..(r + 1) * k], Some(r))?;
        if let Some(ys) = ys {
            check_y(ys[r], Some(r))?;
        }
    }
    Ok(())
}

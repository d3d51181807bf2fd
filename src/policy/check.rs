//! Checks shared by the sections' `validate`: each returns a
//! [`PolicyError`] that names the field and quotes its value.

use std::time::Duration;

use super::PolicyError;
use super::duration;

/// A share of calls, in (0, 1]; NaN is not.
pub(super) fn rate(field: &str, value: f64) -> Result<(), PolicyError> {
    if value > 0.0 && value <= 1.0 {
        Ok(())
    } else {
        Err(PolicyError::invalid(
            field,
            float(value),
            "is not in (0, 1]",
        ))
    }
}

/// A share in [0, 1); NaN is not.
pub(super) fn share_below_one(field: &str, value: f64) -> Result<(), PolicyError> {
    if (0.0..1.0).contains(&value) {
        Ok(())
    } else {
        Err(PolicyError::invalid(
            field,
            float(value),
            "is not in [0, 1)",
        ))
    }
}

/// A duration that must be more than zero.
pub(super) fn positive(field: &str, value: Duration) -> Result<(), PolicyError> {
    if value.is_zero() {
        Err(PolicyError::invalid(
            field,
            duration::display(value),
            "must be more than zero",
        ))
    } else {
        Ok(())
    }
}

/// A float as ops would write it: `1.0`, `0.5`, `NaN`, `inf`.
pub(super) fn float(value: f64) -> String {
    format!("{value:?}")
}

/// Longest header name the `http` crate accepts.
const MAX_HEADER_NAME_LEN: usize = (1 << 16) - 1;

/// The characters of an HTTP field name besides letters and digits: a
/// `token` of RFC 9110 §5.6.2.
const HEADER_NAME_PUNCTUATION: &str = "!#$%&'*+-.^_`|~";

/// Whether `c` may appear in an HTTP header name (RFC 9110 `tchar`).
fn is_header_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || HEADER_NAME_PUNCTUATION.contains(c)
}

/// An HTTP header name: a non-empty RFC 9110 token (letters, digits and
/// ``!#$%&'*+-.^_`|~``), as the `http` crate accepts it. Case does not
/// matter: header names are compared ignoring it.
pub(super) fn header_name(field: &str, name: &str) -> Result<(), PolicyError> {
    let invalid = |why: String| {
        PolicyError::invalid(
            field,
            format!("{name:?}"),
            format!("is not a valid HTTP header name: {why}"),
        )
    };
    if name.is_empty() {
        return Err(invalid("it is empty".to_owned()));
    }
    if let Some(c) = name.chars().find(|&c| !is_header_name_char(c)) {
        return Err(invalid(format!(
            "it contains {c:?}; use letters, digits and {HEADER_NAME_PUNCTUATION}"
        )));
    }
    if name.len() > MAX_HEADER_NAME_LEN {
        return Err(invalid(format!(
            "it is {} bytes long, more than {MAX_HEADER_NAME_LEN}",
            name.len()
        )));
    }
    Ok(())
}

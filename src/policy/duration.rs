//! Durations in ops' human form (`"30s"`, `"250ms"`, `"1h 30m"`), with
//! errors that quote what was written and say what is wrong with it.
//!
//! Serialization writes `humantime`'s canonical form, which parses back to
//! the same value.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;

/// What a duration field expects, as said in "invalid type" errors.
const EXPECTING: &str = r#"a duration such as "30s", "250ms" or "5m""#;

/// Parses `text` as a duration, or says why it is not one.
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.starts_with('-') {
        return Err(format!(
            "invalid duration {text:?}: a duration cannot be negative"
        ));
    }
    humantime::parse_duration(trimmed).map_err(|err| {
        let why = match err {
            humantime::DurationError::Empty => format!("it is empty; expected {EXPECTING}"),
            humantime::DurationError::UnknownUnit {
                ref unit, value, ..
            } if unit.is_empty() => {
                format!("it needs a unit, e.g. \"{value}s\" or \"{value}ms\"")
            }
            other => other.to_string(),
        };
        format!("invalid duration {text:?}: {why}")
    })
}

/// Writes `duration` the way ops would, e.g. `5m` or `1s 500ms`.
pub(crate) fn display(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTING)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        parse(text).map_err(E::custom)
    }
}

pub(crate) fn serialize<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*duration))
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_str(DurationVisitor)
}

/// The same for an optional duration; `None` is left out when serializing.
pub(crate) mod option {
    use super::*;

    struct OptionVisitor;

    impl<'de> Visitor<'de> for OptionVisitor {
        type Value = Option<Duration>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(EXPECTING)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            super::deserialize(d).map(Some)
        }
    }

    pub(crate) fn serialize<S: Serializer>(
        duration: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match duration {
            Some(duration) => super::serialize(duration, s),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        d.deserialize_option(OptionVisitor)
    }
}

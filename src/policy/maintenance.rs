//! The `[[maintenance]]` windows: planned periods in which the back end is
//! not to be called at all, written in wall-clock time (RFC 3339).

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use super::PolicyError;

/// What a timestamp field expects, as said in errors.
const EXPECTING: &str =
    r#"an RFC 3339 timestamp with an offset, such as "2026-12-02T00:00:00+05:30""#;

/// One planned maintenance window: from `from` until `until`, every request
/// is answered at once with [`Reason::Maintenance`](crate::Reason), the
/// window's `message`, and a retry hint pointing at `until`.
///
/// ```toml
/// [[maintenance]]
/// from = "2026-12-02T00:00:00+05:30"          # RFC 3339, with its offset
/// until = "2026-12-09T00:00:00+05:30"
/// message = "Planned upgrade. Urgent files: use e-mail."   # optional
/// ```
///
/// A window keeps its times as written, offset included, so a policy
/// written back says what ops wrote; [`from`](Self::from) and
/// [`until`](Self::until) give them as [`SystemTime`]s. `from` must come
/// before `until` ([`Policy::validate`](super::Policy::validate) says so
/// naming the window). Windows that overlap or touch act as one; see the
/// [policy docs](super#maintenance-windows).
///
/// ```
/// use std::time::Duration;
/// use brownout::policy::MaintenanceWindow;
///
/// let window = MaintenanceWindow::parse("2026-12-02T00:00:00+05:30", "2026-12-09T00:00:00+05:30")?
///     .with_message("Planned upgrade. Urgent files: use e-mail.");
/// assert_eq!(window.until().duration_since(window.from()).unwrap(), Duration::from_secs(7 * 86_400));
/// assert_eq!(window.to_string(), "2026-12-02T00:00:00+05:30 until 2026-12-09T00:00:00+05:30");
/// # Ok::<(), brownout::PolicyError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceWindow {
    from: Written,
    until: Written,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl MaintenanceWindow {
    /// A window from `from` until `until`, without a message; written back
    /// in UTC (`…Z`).
    pub fn new(from: SystemTime, until: SystemTime) -> Self {
        Self {
            from: Written::utc(from),
            until: Written::utc(until),
            message: None,
        }
    }

    /// A window from two RFC 3339 timestamps with their offsets, kept as
    /// written; the error names `from` or `until` and quotes it.
    pub fn parse(from: &str, until: &str) -> Result<Self, PolicyError> {
        let read = |field: &str, text: &str| {
            text.parse::<Written>()
                .map_err(|problem| PolicyError::invalid(field, format!("{text:?}"), problem))
        };
        Ok(Self {
            from: read("from", from)?,
            until: read("until", until)?,
            message: None,
        })
    }

    /// The same window, telling the people it turns away `message`.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// When the window starts.
    pub fn from(&self) -> SystemTime {
        self.from.system_time()
    }

    /// When the window ends: requests are served again from this instant.
    pub fn until(&self) -> SystemTime {
        self.until.system_time()
    }

    /// What the people turned away are told, if ops wrote it. A blank
    /// message counts as none.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref().filter(|m| !m.trim().is_empty())
    }

    /// Checks that the window ends after it starts; errors name it as
    /// `maintenance[index]`.
    pub(crate) fn validate_at(&self, index: usize) -> Result<(), PolicyError> {
        if self.until.at > self.from.at {
            return Ok(());
        }
        Err(PolicyError::invalid(
            format!("maintenance[{index}].until"),
            self.until,
            format!("is not after maintenance[{index}].from ({})", self.from),
        ))
    }
}

impl fmt::Display for MaintenanceWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} until {}", self.from, self.until)
    }
}

/// An instant as ops wrote it: the instant, and the offset it was written
/// with (`None` for `Z`), so that it is written back the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Written {
    at: jiff::Timestamp,
    offset: Option<jiff::tz::Offset>,
}

impl Written {
    fn utc(time: SystemTime) -> Self {
        // SystemTime's range on every platform fits jiff's (years -9999 to
        // 9999) but for absurd values; those are clamped.
        let at = jiff::Timestamp::try_from(time).unwrap_or_else(|_| {
            if time < SystemTime::UNIX_EPOCH {
                jiff::Timestamp::MIN
            } else {
                jiff::Timestamp::MAX
            }
        });
        Self { at, offset: None }
    }

    fn system_time(self) -> SystemTime {
        SystemTime::from(self.at)
    }
}

impl FromStr for Written {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid =
            |why: String| format!("invalid timestamp {text:?}: {why}; expected {EXPECTING}");
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(invalid("it is empty".to_owned()));
        }
        let at = trimmed
            .parse::<jiff::Timestamp>()
            .map_err(|err| invalid(err.to_string()))?;
        let pieces =
            jiff::fmt::temporal::Pieces::parse(trimmed).map_err(|err| invalid(err.to_string()))?;
        let offset = match pieces.offset() {
            Some(jiff::fmt::temporal::PiecesOffset::Zulu) | None => None,
            Some(offset) => Some(offset.to_numeric_offset()),
        };
        Ok(Self { at, offset })
    }
}

impl fmt::Display for Written {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.offset {
            Some(offset) => write!(f, "{}", self.at.display_with_offset(offset)),
            None => write!(f, "{}", self.at),
        }
    }
}

impl Serialize for Written {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Written {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct WrittenVisitor;

        impl<'de> Visitor<'de> for WrittenVisitor {
            type Value = Written;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTING)
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Written, E> {
                text.parse().map_err(E::custom)
            }

            /// A TOML datetime written without quotes
            /// (`from = 2026-12-02T00:00:00+05:30`): the toml crate hands
            /// it over as a one-entry map holding its text.
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Written, A::Error> {
                const TOML_DATETIME: &str = "$__toml_private_datetime";
                match map.next_key::<String>()? {
                    Some(key) if key == TOML_DATETIME => {
                        let text: String = map.next_value()?;
                        text.parse().map_err(de::Error::custom)
                    }
                    _ => Err(de::Error::invalid_type(de::Unexpected::Map, &self)),
                }
            }
        }

        d.deserialize_any(WrittenVisitor)
    }
}

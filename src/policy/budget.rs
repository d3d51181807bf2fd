//! The `[budget]` section: a declared capacity (admissions per period) with
//! shares reserved for priority classes, kept in this process or shared by
//! every replica through Redis.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::PolicyError;
use super::PriorityPolicy;
use super::check::{float, positive};
use super::duration;

/// How the period of a [`BudgetPolicy`] moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BudgetWindow {
    /// Any stretch of time `per` long holds at most `capacity` admissions.
    /// The window is counted in 60 slots of `per / 60`: a unit frees one
    /// period after the end of the slot it was taken in (at most `per / 60`
    /// later than to the nanosecond). Reserves are never released early: a
    /// sliding window has no end.
    #[default]
    Sliding,
    /// Calendar periods: `per` long, aligned on midnight 1970-01-01 in the
    /// zone `tz` (with `per = "1d"`, calendar days in that zone; in a zone
    /// with summer time the periods follow its local clock, so that a
    /// period shorter than a day repeats or skips the hour the clocks
    /// change). Each period starts with the full capacity; unused reserves
    /// are released to every class `release` before the period ends.
    Calendar,
}

impl BudgetWindow {
    /// The name as written in a policy.
    pub const fn as_str(self) -> &'static str {
        match self {
            BudgetWindow::Sliding => "sliding",
            BudgetWindow::Calendar => "calendar",
        }
    }
}

/// Where a budget's counts are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BudgetStore {
    /// In this process: exact for this process, unaware of other replicas.
    #[default]
    Local,
    /// In Redis at `url`: exact for every replica sharing it (one script
    /// per admission), local fallback while Redis does not answer.
    Redis,
}

/// The `[budget]` section of a [`Policy`](crate::Policy): a declared
/// capacity, `capacity` admissions every `per`, with shares reserved for
/// priority classes. Optional: without it nothing is counted.
///
/// ```toml
/// [budget]
/// capacity = 600                 # admissions per period
/// per = "1d"
/// window = "sliding"             # sliding | calendar
/// # tz = "Asia/Kolkata"          # calendar: the periods' time zone (or "+05:30")
/// # release = "2h"               # calendar: unused reserves released this long before the end
/// shares = { urgent = 0.3 }      # reserved for a class (names from [priority].classes)
/// store = "local"                # local | redis
/// # url = "redis://127.0.0.1:6379"
/// # key_prefix = "brownout:budget"
/// # shared_timeout = "5ms"       # longest wait on Redis per admission
/// # replicas = 4                 # fleet size, floor for the fallback split
/// ```
///
/// A class with a share `s` has `floor(s × capacity)` units no other class
/// may take; it uses its reserve first, then any unreserved unit. Classes
/// without a share use only unreserved units (and, in a calendar window's
/// last `release`, what is left of every reserve).
///
/// [`validate`](Self::validate) checks every field; [`Policy::validate`]
/// also checks that every class in `shares` is in `[priority].classes`.
///
/// [`Policy::validate`]: crate::Policy::validate
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetPolicy {
    /// Admissions per period, at least 1 and at most
    /// [`MAX_CAPACITY`](Self::MAX_CAPACITY).
    pub capacity: u64,
    /// The period; at least 60 ms (a sliding window counts in slots of
    /// `per / 60`).
    #[serde(with = "duration")]
    pub per: Duration,
    /// Sliding or calendar periods.
    pub window: BudgetWindow,
    /// The time zone of calendar periods: a fixed UTC offset (`"UTC"`,
    /// `"+05:30"`, `"-08:00"`) or a zone of the time zone database
    /// (`"Asia/Kolkata"`, `"Europe/Berlin"`: read from the system's
    /// `/usr/share/zoneinfo`, Debian's `tzdata`; bundled on Windows).
    pub tz: String,
    /// In a calendar window, how long before a period's end unused reserves
    /// are released to every class; by default a tenth of `per`. Less than
    /// `per`. Ignored by a sliding window.
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub release: Option<Duration>,
    /// Share of `capacity` reserved for a class, by class name; each in
    /// (0, 1], together at most 1.
    pub shares: BTreeMap<String, f64>,
    /// Where the counts are kept.
    pub store: BudgetStore,
    /// The Redis server of the `redis` store.
    pub url: String,
    /// The prefix of the budget's Redis keys; replicas sharing a budget use
    /// the same one.
    pub key_prefix: String,
    /// The longest an admission waits on Redis before deciding from local
    /// state; more than zero.
    #[serde(with = "duration")]
    pub shared_timeout: Duration,
    /// How many replicas share the budget, as ops know it; while Redis is
    /// down each replica admits `capacity / max(replicas, replicas seen)`.
    /// At least 1.
    pub replicas: u32,
}

impl Default for BudgetPolicy {
    fn default() -> Self {
        Self {
            capacity: 1000,
            per: Duration::from_secs(60),
            window: BudgetWindow::Sliding,
            tz: "UTC".to_owned(),
            release: None,
            shares: BTreeMap::new(),
            store: BudgetStore::Local,
            url: "redis://127.0.0.1:6379".to_owned(),
            key_prefix: "brownout:budget".to_owned(),
            shared_timeout: Duration::from_millis(5),
            replicas: 1,
        }
    }
}

impl BudgetPolicy {
    /// Largest `capacity` a policy may set.
    pub const MAX_CAPACITY: u64 = 1 << 31;

    /// Shortest `per`.
    pub const MIN_PER: Duration = Duration::from_millis(60);

    /// Checks every field; the error names the field and quotes its value.
    ///
    /// ```
    /// use brownout::policy::BudgetPolicy;
    ///
    /// let policy = BudgetPolicy {
    ///     shares: [("urgent".to_owned(), 0.7), ("normal".to_owned(), 0.5)].into(),
    ///     ..BudgetPolicy::default()
    /// };
    /// assert_eq!(
    ///     policy.validate().unwrap_err().to_string(),
    ///     "budget.shares: 1.2 (normal 0.5 + urgent 0.7) is more than 1",
    /// );
    /// ```
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.validate_at("budget")
    }

    pub(crate) fn validate_at(&self, at: &str) -> Result<(), PolicyError> {
        let field = |name: &str| format!("{at}.{name}");
        if !(1..=Self::MAX_CAPACITY).contains(&self.capacity) {
            return Err(PolicyError::invalid(
                field("capacity"),
                self.capacity,
                format!("is not in 1..={}", Self::MAX_CAPACITY),
            ));
        }
        if self.per < Self::MIN_PER {
            return Err(PolicyError::invalid(
                field("per"),
                duration::display(self.per),
                format!("is shorter than {}", duration::display(Self::MIN_PER)),
            ));
        }
        if let Err(why) = parse_zone(&self.tz) {
            return Err(PolicyError::invalid(
                field("tz"),
                format!("{:?}", self.tz),
                why,
            ));
        }
        if let Some(release) = self.release {
            if release >= self.per {
                return Err(PolicyError::invalid(
                    field("release"),
                    duration::display(release),
                    format!(
                        "is not shorter than {} ({})",
                        field("per"),
                        duration::display(self.per)
                    ),
                ));
            }
        }
        let mut total = 0.0;
        for (class, &share) in &self.shares {
            if !(share > 0.0 && share <= 1.0) {
                return Err(PolicyError::invalid(
                    format!("{}.{class}", field("shares")),
                    float(share),
                    "is not in (0, 1]",
                ));
            }
            total += share;
        }
        if total > 1.0 + 1e-9 {
            let parts: Vec<String> = self
                .shares
                .iter()
                .map(|(class, share)| format!("{class} {}", float(*share)))
                .collect();
            return Err(PolicyError::invalid(
                field("shares"),
                format!(
                    "{} ({})",
                    float((total * 1e9).round() / 1e9),
                    parts.join(" + ")
                ),
                "is more than 1",
            ));
        }
        if self.store == BudgetStore::Redis
            && !["redis://", "rediss://", "redis+unix://", "unix://"]
                .iter()
                .any(|scheme| self.url.starts_with(scheme))
        {
            return Err(PolicyError::invalid(
                field("url"),
                format!("{:?}", self.url),
                "is not a Redis URL (redis://host:port, rediss://, unix://)",
            ));
        }
        if self.store == BudgetStore::Redis && !cfg!(feature = "fleet") {
            return Err(PolicyError::invalid(
                field("store"),
                "\"redis\"",
                "needs brownout's `fleet` cargo feature, which this build lacks: \
                 enable it, or use store = \"local\"",
            ));
        }
        if self.key_prefix.is_empty() {
            return Err(PolicyError::invalid(
                field("key_prefix"),
                "\"\"",
                "is empty",
            ));
        }
        positive(&field("shared_timeout"), self.shared_timeout)?;
        if self.replicas == 0 {
            return Err(PolicyError::invalid(
                field("replicas"),
                0,
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// Checks that every class named in `shares` is one of `priority.classes`.
    pub(crate) fn validate_classes(&self, priority: &PriorityPolicy) -> Result<(), PolicyError> {
        for class in self.shares.keys() {
            if !priority
                .classes
                .iter()
                .any(|known| known.eq_ignore_ascii_case(class))
            {
                return Err(PolicyError::invalid(
                    format!("budget.shares.{class}"),
                    format!("{class:?}"),
                    format!("is not one of priority.classes {:?}", priority.classes),
                ));
            }
        }
        Ok(())
    }

    /// The zone of `tz` (UTC if it does not parse: `validate` says so).
    pub(crate) fn zone(&self) -> Zone {
        parse_zone(&self.tz).unwrap_or(Zone::Fixed(0))
    }

    /// How long before a calendar period's end reserves are released.
    pub(crate) fn release_or_default(&self) -> Duration {
        self.release.unwrap_or(self.per / 10)
    }
}

/// The time zone of a calendar budget.
#[derive(Debug)]
pub(crate) enum Zone {
    /// A fixed offset, seconds east of UTC.
    Fixed(i64),
    /// A zone of the time zone database: its offset changes (summer time).
    Named(jiff::tz::TimeZone),
}

/// A UTC offset, or else a zone name of the time zone database.
fn parse_zone(tz: &str) -> Result<Zone, String> {
    match parse_offset(tz) {
        Ok(seconds) => Ok(Zone::Fixed(seconds)),
        Err(_) => jiff::tz::TimeZone::get(tz.trim())
            .map(Zone::Named)
            .map_err(|why| {
                format!(
                    "is neither a UTC offset such as \"UTC\", \"+05:30\" or \"-08:00\" nor a \
                     zone of the time zone database such as \"Asia/Kolkata\" ({why})"
                )
            }),
    }
}

/// `"UTC"`, `"Z"`, `"+05:30"`, `"-08:00"`, `"+0530"` → seconds east of UTC.
fn parse_offset(tz: &str) -> Result<i64, String> {
    let tz = tz.trim();
    if tz.eq_ignore_ascii_case("utc") || tz == "Z" || tz.is_empty() {
        return Ok(0);
    }
    let bad = || "is not a UTC offset such as \"UTC\", \"+05:30\" or \"-08:00\"".to_owned();
    let (sign, rest) = match tz.as_bytes()[0] {
        b'+' => (1, &tz[1..]),
        b'-' => (-1, &tz[1..]),
        _ => return Err(bad()),
    };
    let digits: String = rest.chars().filter(|&c| c != ':').collect();
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let hours: i64 = digits[..2].parse().map_err(|_| bad())?;
    let minutes: i64 = digits[2..].parse().map_err(|_| bad())?;
    if hours > 18 || minutes > 59 {
        return Err(bad());
    }
    Ok(sign * (hours * 3600 + minutes * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse() {
        assert_eq!(parse_offset("UTC"), Ok(0));
        assert_eq!(parse_offset("+05:30"), Ok(19_800));
        assert_eq!(parse_offset("-0800"), Ok(-28_800));
        assert!(parse_offset("Asia/Kolkata").is_err());
        assert!(parse_offset("+25:00").is_err());
        assert!(parse_offset("+").is_err());
    }

    #[test]
    fn fields_are_checked_by_name() {
        let bad = |policy: BudgetPolicy| policy.validate().unwrap_err().to_string();
        assert_eq!(
            bad(BudgetPolicy {
                capacity: 0,
                ..BudgetPolicy::default()
            }),
            "budget.capacity: 0 is not in 1..=2147483648"
        );
        assert_eq!(
            bad(BudgetPolicy {
                per: Duration::from_millis(10),
                ..BudgetPolicy::default()
            }),
            "budget.per: 10ms is shorter than 60ms"
        );
        assert_eq!(
            bad(BudgetPolicy {
                shares: [("urgent".to_owned(), 0.0)].into(),
                ..BudgetPolicy::default()
            }),
            "budget.shares.urgent: 0.0 is not in (0, 1]"
        );
        assert_eq!(
            bad(BudgetPolicy {
                store: BudgetStore::Redis,
                url: "http://x".to_owned(),
                ..BudgetPolicy::default()
            }),
            "budget.url: \"http://x\" is not a Redis URL (redis://host:port, rediss://, unix://)"
        );
        assert_eq!(
            bad(BudgetPolicy {
                shared_timeout: Duration::ZERO,
                ..BudgetPolicy::default()
            }),
            "budget.shared_timeout: 0s must be more than zero"
        );
        let misspelt = bad(BudgetPolicy {
            tz: "Asia/Kolcata".to_owned(),
            ..BudgetPolicy::default()
        });
        assert!(
            misspelt.starts_with("budget.tz: \"Asia/Kolcata\" is neither a UTC offset"),
            "{misspelt}"
        );
        assert_eq!(
            bad(BudgetPolicy {
                release: Some(Duration::from_secs(60)),
                ..BudgetPolicy::default()
            }),
            "budget.release: 1m is not shorter than budget.per (1m)"
        );
    }
}

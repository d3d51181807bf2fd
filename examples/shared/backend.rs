//! Ops' control of the examples' simulated back end: the JSON of
//! `POST /admin/backend` (and of the gRPC example's `Admin/SetBackend`), read
//! with errors that name the field, and the status they answer with.
//!
//! ```text
//! {"state":"down"}                      refuses every call at once
//! {"state":"hang"}                      never answers (callers time out)
//! {"state":"slow","factor":5}           five times slower
//! {"capacity":0.27}                     serves 27% of its base capacity at once
//! {"state":"flapping","period":"20s"}   up 10 s, down 10 s, ...
//! {"state":"up","capacity":1}           healthy, full capacity
//! ```
//!
//! Shared by the examples with `#[path = "shared/backend.rs"] mod backend;`
//! (a file in a subfolder of `examples/` is not an example of its own).
#![allow(dead_code)] // each example uses part of it

use std::fmt;
use std::time::Duration;

use brownout::sim::{Change, Condition, ServiceTime, SimBackend, SimBuilder, SimHandle};
use serde::Deserialize;

/// A change ops asked for, not yet applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackendChange {
    /// The new condition, if `state` was given.
    pub condition: Option<Condition>,
    /// The new share of the base capacity, if `capacity` was given.
    pub capacity: Option<f64>,
}

/// A change that cannot be applied: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeError {
    /// The JSON field at fault (`state`, `factor`, `period`, `capacity`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ChangeError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// The error as the JSON body of a 400 answer.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.to_string(), "field": self.field })
    }
}

impl fmt::Display for ChangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for ChangeError {}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum State {
    Up,
    Slow,
    Down,
    Hang,
    Flapping,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    state: Option<State>,
    factor: Option<f64>,
    period: Option<String>,
    capacity: Option<f64>,
}

impl BackendChange {
    /// Reads the JSON ops sent, checking every field.
    pub fn parse(json: &[u8]) -> Result<Self, ChangeError> {
        let de = &mut serde_json::Deserializer::from_slice(json);
        let wire: Wire = serde_path_to_error::deserialize(de).map_err(|err| {
            let field = err.path().to_string();
            let field = if field == "." {
                "body".to_owned()
            } else {
                field
            };
            ChangeError::new(&field, err.into_inner().to_string())
        })?;

        let needs_state = |field: &str, state: &str| {
            ChangeError::new(field, format!("only goes with \"state\":\"{state}\""))
        };
        if wire.factor.is_some() && !matches!(wire.state, Some(State::Slow)) {
            return Err(needs_state("factor", "slow"));
        }
        if wire.period.is_some() && !matches!(wire.state, Some(State::Flapping)) {
            return Err(needs_state("period", "flapping"));
        }
        let condition = match wire.state {
            None => None,
            Some(State::Up) => Some(Condition::Up),
            Some(State::Down) => Some(Condition::DownFast),
            Some(State::Hang) => Some(Condition::DownHang),
            Some(State::Slow) => {
                let factor = wire.factor.ok_or_else(|| {
                    ChangeError::new(
                        "factor",
                        "missing: \"state\":\"slow\" needs a factor, e.g. 5",
                    )
                })?;
                Some(Condition::Slow { factor })
            }
            Some(State::Flapping) => {
                let text = wire.period.ok_or_else(|| {
                    ChangeError::new(
                        "period",
                        "missing: \"state\":\"flapping\" needs a period, e.g. \"20s\"",
                    )
                })?;
                let period = humantime::parse_duration(&text).map_err(|err| {
                    ChangeError::new("period", format!("{text:?} is not a duration: {err}"))
                })?;
                Some(Condition::Flapping { period })
            }
        };
        if condition.is_none() && wire.capacity.is_none() {
            return Err(ChangeError::new(
                "state",
                "missing: give \"state\" (up, slow, down, hang, flapping), \"capacity\", or both",
            ));
        }
        let change = Self {
            condition,
            capacity: wire.capacity,
        };
        change.validate()?;
        Ok(change)
    }

    /// Checks the values with the simulated back end's own rules.
    fn validate(&self) -> Result<(), ChangeError> {
        if let Some(condition) = self.condition {
            condition.validate().map_err(|err| {
                let field = match condition {
                    Condition::Slow { .. } => "factor",
                    Condition::Flapping { .. } => "period",
                    _ => "state",
                };
                ChangeError::new(field, err.to_string())
            })?;
        }
        if let Some(fraction) = self.capacity {
            Change::CapacityFraction(fraction)
                .validate()
                .map_err(|err| ChangeError::new("capacity", err.to_string()))?;
        }
        Ok(())
    }

    /// Applies the change to the back end: all of it, or (on error) none.
    pub fn apply(&self, sim: &SimHandle) -> Result<(), ChangeError> {
        self.validate()?;
        if let Some(fraction) = self.capacity {
            sim.set_capacity_fraction(fraction)
                .map_err(|err| ChangeError::new("capacity", err.to_string()))?;
        }
        if let Some(condition) = self.condition {
            sim.set_condition(condition)
                .map_err(|err| ChangeError::new("state", err.to_string()))?;
        }
        Ok(())
    }
}

/// The back end's condition as ops write it.
pub fn describe(condition: Condition) -> String {
    match condition {
        Condition::Up => "up".to_owned(),
        Condition::Slow { factor } => format!("slow ×{factor}"),
        Condition::DownFast => "down".to_owned(),
        Condition::DownHang => "hang".to_owned(),
        Condition::Flapping { period } => {
            format!("flapping every {}", humantime::format_duration(period))
        }
        other => format!("{other:?}"),
    }
}

/// What `GET /admin/backend` answers: condition, capacity and counters.
pub fn status(sim: &SimHandle) -> serde_json::Value {
    let stats = sim.stats();
    serde_json::json!({
        "state": describe(sim.condition()),
        "capacity": stats.capacity,
        "base_capacity": sim.base_capacity(),
        "calls": {
            "started": stats.started,
            "served": stats.served,
            "failed": stats.failed,
            "cancelled": stats.cancelled,
            "in_service": stats.in_service,
            "queued": stats.queued,
            "hanging": stats.hanging,
        },
        "peak_in_service": stats.peak_in_service,
        "peak_concurrent": stats.peak_concurrent,
    })
}

/// How long a call may take before the front end gives up on it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// The central booking server of the incidents (the booking examples' back
/// end): about 100 calls at once, a few hundred milliseconds each
/// (log-normal, mean 200 ms).
pub fn central_server() -> SimBuilder {
    SimBackend::builder()
        .capacity(100)
        .service_time(ServiceTime::LogNormal {
            mean: Duration::from_millis(200),
            cv: 0.5,
        })
        .seed(2026)
}

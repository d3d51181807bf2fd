//! The `[fleet]` section: breaker verdicts shared by the replicas of a
//! service through Redis (feature `fleet`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::PolicyError;
use super::check::positive;
use super::duration;

/// How a replica follows the fleet's breaker verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FleetShare {
    /// Open as soon as any replica publishes an open verdict.
    Follow,
    /// Open once `quorum` replicas hold one.
    Quorum,
}

impl FleetShare {
    /// The name as written in a policy.
    pub const fn as_str(self) -> &'static str {
        match self {
            FleetShare::Follow => "follow",
            FleetShare::Quorum => "quorum",
        }
    }
}

/// The `[fleet]` section of a [`Policy`](crate::Policy): how the replicas
/// of a service share their breakers' verdicts (feature `fleet`; see
/// `brownout::fleet`): a stack built from the policy
/// (`BrownoutLayer::from_policy`) shares every route's breaker, and
/// `FleetBreakerLayer::from_policy` reads it too. Optional: without it
/// each replica's breaker decides alone.
///
/// ```toml
/// [fleet]
/// url = "redis://127.0.0.1:6379"
/// share = "follow"               # follow: open on any replica's verdict
/// # share = "quorum"             # quorum: open once `quorum` replicas hold one
/// # quorum = 2                   # (writing `quorum` alone means share = "quorum")
/// shared_timeout = "5ms"         # the longest a read or write of Redis waits
/// key_prefix = "brownout:fleet"  # keys are <key_prefix>:<route>:…; one per service
/// ```
///
/// [`validate`](Self::validate) names the field and its value:
///
/// ```
/// # #[cfg(feature = "fleet")] {
/// use brownout::policy::{FleetPolicy, FleetShare};
///
/// let fleet = FleetPolicy { share: Some(FleetShare::Follow), quorum: Some(2), ..FleetPolicy::default() };
/// assert_eq!(
///     fleet.validate().unwrap_err().to_string(),
///     "fleet.quorum: 2 is only read with share = \"quorum\" (share is \"follow\")",
/// );
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetPolicy {
    /// The Redis server the replicas share.
    pub url: String,
    /// How a replica follows the fleet's verdicts; `None` (not written):
    /// `quorum` if `quorum` is written, else `follow`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share: Option<FleetShare>,
    /// With `share = "quorum"`: how many replicas must hold an open
    /// verdict before the others open; at least 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quorum: Option<u32>,
    /// The longest one read or write of Redis waits; more than zero.
    #[serde(with = "duration")]
    pub shared_timeout: Duration,
    /// What the fleet's Redis keys start with (`<key_prefix>:<route>:open`
    /// and so on); not empty. Two services that share one Redis need
    /// prefixes of their own: with the same prefix, a route of the same
    /// name (`default`, in every single-route stack) would be one route to
    /// both, and a breaker opening in one would open the other.
    pub key_prefix: String,
}

impl Default for FleetPolicy {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            share: None,
            quorum: None,
            shared_timeout: Duration::from_millis(5),
            key_prefix: "brownout:fleet".to_owned(),
        }
    }
}

impl FleetPolicy {
    /// Largest `quorum`.
    pub const MAX_QUORUM: u32 = 1024;

    /// How a replica follows the fleet, and the quorum (1 for `follow`).
    pub fn effective_share(&self) -> (FleetShare, u32) {
        match (self.share, self.quorum) {
            (Some(FleetShare::Follow), _) | (None, None) => (FleetShare::Follow, 1),
            (_, quorum) => (FleetShare::Quorum, quorum.unwrap_or(1)),
        }
    }

    /// Checks every field; the error names the field and quotes its value.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if !cfg!(feature = "fleet") {
            return Err(PolicyError::invalid(
                "fleet",
                "(a fleet section)",
                "needs brownout's `fleet` cargo feature, which this build lacks: \
                 enable it, or remove the section",
            ));
        }
        if !["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|scheme| self.url.starts_with(scheme))
        {
            return Err(PolicyError::invalid(
                "fleet.url",
                format!("{:?}", self.url),
                "is not a Redis URL (redis://host:port, rediss://, unix://)",
            ));
        }
        if self.key_prefix.trim().is_empty() {
            return Err(PolicyError::invalid(
                "fleet.key_prefix",
                format!("{:?}", self.key_prefix),
                "is empty: the fleet's Redis keys need a prefix (the default is \"brownout:fleet\")",
            ));
        }
        match (self.share, self.quorum) {
            (Some(FleetShare::Follow), Some(quorum)) => {
                return Err(PolicyError::invalid(
                    "fleet.quorum",
                    quorum,
                    "is only read with share = \"quorum\" (share is \"follow\")",
                ));
            }
            (Some(FleetShare::Quorum), None) => {
                return Err(PolicyError::invalid(
                    "fleet.share",
                    "\"quorum\"",
                    "needs fleet.quorum: how many replicas must hold an open verdict",
                ));
            }
            (_, Some(quorum)) if !(1..=Self::MAX_QUORUM).contains(&quorum) => {
                return Err(PolicyError::invalid(
                    "fleet.quorum",
                    quorum,
                    format!("is not in 1..={}", Self::MAX_QUORUM),
                ));
            }
            _ => {}
        }
        positive("fleet.shared_timeout", self.shared_timeout)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_and_quorum() {
        let with = |share, quorum| FleetPolicy {
            share,
            quorum,
            ..FleetPolicy::default()
        };
        assert_eq!(with(None, None).effective_share(), (FleetShare::Follow, 1));
        assert_eq!(
            with(None, Some(3)).effective_share(),
            (FleetShare::Quorum, 3)
        );
        assert_eq!(
            with(Some(FleetShare::Quorum), Some(2)).effective_share(),
            (FleetShare::Quorum, 2)
        );
        assert_eq!(
            with(Some(FleetShare::Follow), None).effective_share(),
            (FleetShare::Follow, 1)
        );
    }

    #[cfg(feature = "fleet")]
    #[test]
    fn bad_values_name_the_field_and_the_value() {
        let bad = |policy: FleetPolicy| policy.validate().unwrap_err().to_string();
        assert_eq!(
            bad(FleetPolicy {
                quorum: Some(0),
                ..FleetPolicy::default()
            }),
            "fleet.quorum: 0 is not in 1..=1024"
        );
        assert_eq!(
            bad(FleetPolicy {
                share: Some(FleetShare::Quorum),
                ..FleetPolicy::default()
            }),
            "fleet.share: \"quorum\" needs fleet.quorum: how many replicas must hold an open verdict"
        );
        assert_eq!(
            bad(FleetPolicy {
                url: "localhost:6379".to_owned(),
                ..FleetPolicy::default()
            }),
            "fleet.url: \"localhost:6379\" is not a Redis URL (redis://host:port, rediss://, unix://)"
        );
        assert_eq!(
            bad(FleetPolicy {
                shared_timeout: Duration::ZERO,
                ..FleetPolicy::default()
            }),
            "fleet.shared_timeout: 0s must be more than zero"
        );
    }

    #[cfg(not(feature = "fleet"))]
    #[test]
    fn a_build_without_the_feature_refuses_the_section() {
        let err = FleetPolicy::default().validate().unwrap_err().to_string();
        assert!(err.starts_with("fleet: "), "{err}");
        assert!(err.contains("`fleet` cargo feature"), "{err}");
    }
}

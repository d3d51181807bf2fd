//! The `[priority]` section: the classes requests come in, most important
//! first, and where an HTTP request says its class.

use serde::{Deserialize, Serialize};

/// The `[priority]` section of a [`Policy`](crate::Policy).
///
/// ```toml
/// [priority]
/// header = "x-priority"                   # where HTTP requests say their class
/// classes = ["urgent", "normal", "bulk"]  # most to least important; shed from the last
/// default = "normal"
/// ```
///
/// A request with no class, or one not in `classes`, gets `default`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PriorityPolicy {
    /// The HTTP header that carries the class name.
    pub header: String,
    /// Class names, most important first (at most 16).
    pub classes: Vec<String>,
    /// The class of requests that name none, or an unknown one.
    pub default: String,
}

/// Most classes a policy may name.
pub const MAX_CLASSES: usize = 16;

impl Default for PriorityPolicy {
    fn default() -> Self {
        Self {
            header: "x-priority".to_owned(),
            classes: vec!["urgent".to_owned(), "normal".to_owned(), "bulk".to_owned()],
            default: "normal".to_owned(),
        }
    }
}

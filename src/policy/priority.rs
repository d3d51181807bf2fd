//! The `[priority]` section: the classes requests come in, most important
//! first, and where an HTTP request says its class.

use serde::{Deserialize, Serialize};

use super::PolicyError;
use super::check::header_name;

/// The `[priority]` section of a [`Policy`](crate::Policy).
///
/// Every field is optional; the defaults are the ones shown here (and in
/// [`PriorityPolicy::default`]).
///
/// ```toml
/// [priority]
/// header = "x-priority"                   # where HTTP requests say their class
/// classes = ["urgent", "normal", "bulk"]  # most to least important; shed from the last
/// default = "normal"
/// ```
///
/// A request with no class, or one not in `classes`, gets `default`.
/// Class names are matched ignoring ASCII case, as header names are.
///
/// [`validate`](Self::validate) checks that `header` is an HTTP header
/// name, that there are 1 to [`MAX_CLASSES`] classes, each a non-empty
/// word of printable ASCII, no two the same ignoring case, and that
/// `default` is one of them; the loaders call it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PriorityPolicy {
    /// The HTTP header that carries the class name: letters, digits and
    /// ``!#$%&'*+-.^_`|~``, any case.
    pub header: String,
    /// Class names, most important first: 1 to [`MAX_CLASSES`] of them,
    /// each printable ASCII without spaces, unique ignoring case. When
    /// capacity is short, the last class is shed first.
    pub classes: Vec<String>,
    /// The class of requests that name none, or an unknown one; one of
    /// `classes` (case ignored).
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

impl PriorityPolicy {
    /// Checks the header name, every class name, and that `default` is a class.
    ///
    /// The error names the first bad field by its path in the policy file,
    /// quotes its value and says why:
    ///
    /// ```
    /// use brownout::PriorityPolicy;
    ///
    /// let policy = PriorityPolicy { default: "vip".to_owned(), ..PriorityPolicy::default() };
    /// let err = policy.validate().unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     r#"priority.default: "vip" is not one of priority.classes ["urgent", "normal", "bulk"]"#,
    /// );
    /// ```
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.validate_at("priority")
    }

    /// [`validate`](Self::validate) for a section found at `at` in the file
    /// (`priority`, or later a route's override).
    pub(crate) fn validate_at(&self, at: &str) -> Result<(), PolicyError> {
        let field = |name: &str| format!("{at}.{name}");

        header_name(&field("header"), &self.header)?;

        if self.classes.is_empty() {
            return Err(PolicyError::invalid(
                field("classes"),
                "[]",
                "must name at least one class",
            ));
        }
        if self.classes.len() > MAX_CLASSES {
            return Err(PolicyError::invalid(
                field("classes"),
                format!("{} classes", self.classes.len()),
                format!("are more than the {MAX_CLASSES} allowed"),
            ));
        }
        for (i, name) in self.classes.iter().enumerate() {
            let at = format!("{}[{i}]", field("classes"));
            let invalid = |why: String| {
                PolicyError::invalid(
                    &at,
                    format!("{name:?}"),
                    format!("is not a valid class name: {why}"),
                )
            };
            if name.is_empty() {
                return Err(invalid("it is empty".to_owned()));
            }
            if let Some(c) = name.chars().find(|c| !c.is_ascii_graphic()) {
                return Err(invalid(format!(
                    "it contains {c:?}; use printable ASCII without spaces"
                )));
            }
            if let Some(first) = self.classes[..i]
                .iter()
                .position(|earlier| earlier.eq_ignore_ascii_case(name))
            {
                return Err(PolicyError::invalid(
                    &at,
                    format!("{name:?}"),
                    format!(
                        "repeats {}[{first}] ({:?}); class names are compared ignoring case",
                        field("classes"),
                        self.classes[first]
                    ),
                ));
            }
        }

        if !self
            .classes
            .iter()
            .any(|class| class.eq_ignore_ascii_case(&self.default))
        {
            return Err(PolicyError::invalid(
                field("default"),
                format!("{:?}", self.default),
                format!("is not one of {} {:?}", field("classes"), self.classes),
            ));
        }
        Ok(())
    }
}

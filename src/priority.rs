//! Priority classes: which requests are shed last and served first.
//!
//! A policy names its classes, most important first (`["urgent", "normal",
//! "bulk"]`). A request's class comes from, in this order: a [`Priority`]
//! in its extensions (set by an earlier layer or handler), an HTTP header
//! (`x-priority: urgent`, with the `http` feature), or a closure of yours;
//! a request that names no class or an unknown one gets the policy's
//! `default`. A malformed value never fails the request: it gets the
//! default class and a debug-level trace.

use std::fmt;
use std::sync::Arc;

use crate::policy::PriorityPolicy;

pub use crate::policy::MAX_CLASSES;

/// A request's class, by rank: 0 is the most important.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Priority(u8);

impl Priority {
    /// The most important class.
    pub const HIGHEST: Priority = Priority(0);

    /// The class of rank `rank` (0 is the most important).
    pub const fn new(rank: u8) -> Self {
        Priority(rank)
    }

    /// The rank: 0 for the most important class.
    pub const fn rank(self) -> u8 {
        self.0
    }
}

/// The classes of a policy, resolved for fast lookups.
#[derive(Debug, Clone)]
pub struct Classes {
    names: Arc<[Box<str>]>,
    default: Priority,
}

impl Classes {
    /// The classes of `policy`. Names beyond [`MAX_CLASSES`] are ignored, and
    /// a `default` that is not among them means the middle class (policy
    /// validation reports both).
    pub fn from_policy(policy: &PriorityPolicy) -> Self {
        let names: Arc<[Box<str>]> = policy
            .classes
            .iter()
            .take(MAX_CLASSES)
            .map(|name| name.as_str().into())
            .collect();
        let names = if names.is_empty() {
            Arc::from(vec![Box::<str>::from("default")])
        } else {
            names
        };
        let default = names
            .iter()
            .position(|name| name.eq_ignore_ascii_case(&policy.default))
            .unwrap_or(names.len() / 2);
        Self {
            default: Priority(default as u8),
            names,
        }
    }

    /// How many classes there are.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are no classes (never: a policy without classes has
    /// one, `default`).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The class of requests that name none.
    pub fn default_priority(&self) -> Priority {
        self.default
    }

    /// The class called `name` (ASCII case ignored).
    pub fn by_name(&self, name: &str) -> Option<Priority> {
        self.parse(name.as_bytes())
    }

    /// The class named by a header value's bytes, if any.
    pub fn parse(&self, value: &[u8]) -> Option<Priority> {
        let value = value.trim_ascii();
        self.names
            .iter()
            .position(|name| name.as_bytes().eq_ignore_ascii_case(value))
            .map(|rank| Priority(rank as u8))
    }

    /// The name of a class; the last class's name for a rank past the end.
    pub fn name(&self, priority: Priority) -> &str {
        let rank = usize::from(priority.0).min(self.names.len() - 1);
        &self.names[rank]
    }

    /// `priority`, or the least important class if it is past the end.
    pub fn clamp(&self, priority: Priority) -> Priority {
        Priority(priority.0.min(self.names.len() as u8 - 1))
    }
}

impl Default for Classes {
    fn default() -> Self {
        Self::from_policy(&PriorityPolicy::default())
    }
}

/// Finds the class of a request.
pub trait PriorityOf<Req> {
    /// The class of `req` among `classes`.
    fn priority_of(&self, req: &Req, classes: &Classes) -> Priority;
}

/// Every request gets the policy's default class.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultPriority;

impl<Req> PriorityOf<Req> for DefaultPriority {
    #[inline]
    fn priority_of(&self, _: &Req, classes: &Classes) -> Priority {
        classes.default_priority()
    }
}

/// A class from a closure; see [`priority_fn`].
#[derive(Clone)]
pub struct PriorityFn<F>(F);

impl<F> fmt::Debug for PriorityFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PriorityFn").finish_non_exhaustive()
    }
}

/// Finds the class with `f(&request, &classes)`.
///
/// ```
/// use brownout::priority::{priority_fn, Classes, Priority};
///
/// // Requests are (user, body) pairs; user 0 is the operator.
/// let by_user = priority_fn(|req: &(u32, String), classes: &Classes| {
///     if req.0 == 0 { Priority::HIGHEST } else { classes.default_priority() }
/// });
/// # let _ = by_user;
/// ```
pub fn priority_fn<F>(f: F) -> PriorityFn<F> {
    PriorityFn(f)
}

impl<Req, F> PriorityOf<Req> for PriorityFn<F>
where
    F: Fn(&Req, &Classes) -> Priority,
{
    #[inline]
    fn priority_of(&self, req: &Req, classes: &Classes) -> Priority {
        classes.clamp((self.0)(req, classes))
    }
}

#[cfg(feature = "http")]
pub use self::http_header::HeaderPriority;

#[cfg(feature = "http")]
mod http_header {
    use super::{Classes, Priority, PriorityOf};
    use crate::policy::PriorityPolicy;

    /// The class of an HTTP request: a [`Priority`] in its extensions, else
    /// the policy's header (`x-priority: urgent`), else the default.
    #[derive(Debug, Clone)]
    pub struct HeaderPriority {
        header: Option<http::HeaderName>,
    }

    impl HeaderPriority {
        /// Reads the header named by `policy.header`. A name that is not a
        /// valid header name reads no header (policy validation reports it).
        pub fn from_policy(policy: &PriorityPolicy) -> Self {
            Self::new(&policy.header)
        }

        /// Reads the header `name`.
        pub fn new(name: &str) -> Self {
            Self {
                header: http::HeaderName::from_bytes(name.as_bytes()).ok(),
            }
        }
    }

    impl<B> PriorityOf<http::Request<B>> for HeaderPriority {
        #[inline]
        fn priority_of(&self, req: &http::Request<B>, classes: &Classes) -> Priority {
            if let Some(priority) = req.extensions().get::<Priority>() {
                return classes.clamp(*priority);
            }
            let Some(value) = self.header.as_ref().and_then(|h| req.headers().get(h)) else {
                return classes.default_priority();
            };
            match classes.parse(value.as_bytes()) {
                Some(priority) => priority,
                None => {
                    tracing::debug!(value = ?value, "brownout: unknown priority class, using the default");
                    classes.default_priority()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_resolve_names_case_insensitively_and_default_unknowns() {
        let classes = Classes::default();
        assert_eq!(classes.by_name("URGENT"), Some(Priority::new(0)));
        assert_eq!(classes.parse(b" bulk "), Some(Priority::new(2)));
        assert_eq!(classes.parse(b"vip"), None);
        assert_eq!(classes.parse(&[0xff, 0xfe]), None);
        assert_eq!(classes.default_priority(), Priority::new(1));
        assert_eq!(classes.name(Priority::new(200)), "bulk");
    }

    #[test]
    fn an_empty_class_list_still_has_one_class() {
        let classes = Classes::from_policy(&PriorityPolicy {
            classes: vec![],
            ..PriorityPolicy::default()
        });
        assert_eq!(classes.len(), 1);
        assert_eq!(classes.default_priority(), Priority::HIGHEST);
    }

    #[cfg(feature = "http")]
    #[test]
    fn http_requests_take_the_extension_then_the_header_then_the_default() {
        let classes = Classes::default();
        let reader = HeaderPriority::from_policy(&PriorityPolicy::default());
        let req = |header: Option<&str>| {
            let mut builder = http::Request::builder();
            if let Some(value) = header {
                builder = builder.header("x-priority", value);
            }
            builder.body(()).unwrap()
        };
        assert_eq!(
            reader.priority_of(&req(Some("urgent")), &classes),
            Priority::new(0)
        );
        assert_eq!(
            reader.priority_of(&req(Some("nonsense")), &classes),
            Priority::new(1)
        );
        assert_eq!(reader.priority_of(&req(None), &classes), Priority::new(1));
        let mut with_extension = req(Some("urgent"));
        with_extension.extensions_mut().insert(Priority::new(2));
        assert_eq!(
            reader.priority_of(&with_extension, &classes),
            Priority::new(2)
        );
    }
}

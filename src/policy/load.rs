//! Loading a policy: from TOML, YAML or JSON text, or from a file in the
//! format its extension names; the parsers' errors turned into
//! [`PolicyError`]s that name the field, line and column.

use std::fmt;
use std::path::Path;

use super::{Policy, PolicyError};

impl Policy {
    /// Reads a TOML policy and [validates](Self::validate) it.
    ///
    /// ```
    /// let policy = brownout::Policy::from_toml("[breaker]\nfailure_rate = 0.3")?;
    /// assert_eq!(policy.breaker.failure_rate, 0.3);
    /// # Ok::<(), brownout::PolicyError>(())
    /// ```
    #[cfg(feature = "toml")]
    #[cfg_attr(docsrs, doc(cfg(feature = "toml")))]
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let policy = parse_toml(text)?;
        policy.validate()?;
        Ok(policy)
    }

    /// Reads a YAML policy and [validates](Self::validate) it. An empty
    /// document is the default policy.
    ///
    /// ```
    /// let policy = brownout::Policy::from_yaml("breaker:\n  open_for: 10s\n")?;
    /// assert_eq!(policy.breaker.open_for, std::time::Duration::from_secs(10));
    /// # Ok::<(), brownout::PolicyError>(())
    /// ```
    #[cfg(feature = "yaml")]
    #[cfg_attr(docsrs, doc(cfg(feature = "yaml")))]
    pub fn from_yaml(text: &str) -> Result<Self, PolicyError> {
        let policy = parse_yaml(text)?;
        policy.validate()?;
        Ok(policy)
    }

    /// Reads a JSON policy and [validates](Self::validate) it. An empty (or
    /// all-blank) text is the default policy, like an empty TOML file.
    ///
    /// ```
    /// let policy = brownout::Policy::from_json(r#"{"breaker": {"minimum_calls": 5}}"#)?;
    /// assert_eq!(policy.breaker.minimum_calls, 5);
    /// # Ok::<(), brownout::PolicyError>(())
    /// ```
    #[cfg(feature = "json")]
    #[cfg_attr(docsrs, doc(cfg(feature = "json")))]
    pub fn from_json(text: &str) -> Result<Self, PolicyError> {
        let policy = parse_json(text)?;
        policy.validate()?;
        Ok(policy)
    }

    /// Reads a policy written in `format` and [validates](Self::validate)
    /// it; [`PolicyError::FormatDisabled`] if this build lacks the format's
    /// feature. Useful when the format is known some other way than by a
    /// file name, e.g. for a policy fetched over the network.
    pub fn from_str_as(format: Format, text: &str) -> Result<Self, PolicyError> {
        match format {
            #[cfg(feature = "toml")]
            Format::Toml => Self::from_toml(text),
            #[cfg(feature = "yaml")]
            Format::Yaml => Self::from_yaml(text),
            #[cfg(feature = "json")]
            Format::Json => Self::from_json(text),
            #[allow(unreachable_patterns)]
            _ => {
                let _ = text;
                Err(PolicyError::FormatDisabled { format, file: None })
            }
        }
    }

    /// Reads the policy file at `path`, in the format its extension names
    /// (`.toml`, `.yaml` or `.yml`, `.json`, in any case), and
    /// [validates](Self::validate) it. Every error names the file.
    ///
    /// ```no_run
    /// let policy = brownout::Policy::from_path("/etc/brownout/policy.toml")?;
    /// # Ok::<(), brownout::PolicyError>(())
    /// ```
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, PolicyError> {
        let path = path.as_ref();
        let in_file = |err: PolicyError| err.in_file(path);
        let format = Format::from_path(path).ok_or_else(|| PolicyError::UnknownFormat {
            file: path.to_owned(),
        })?;
        if !format.is_enabled() {
            return Err(in_file(PolicyError::FormatDisabled { format, file: None }));
        }
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            file: path.to_owned(),
            source,
        })?;
        Self::from_str_as(format, &text).map_err(in_file)
    }
}

/// A policy file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// TOML, feature `toml` (on by default); extension `.toml`.
    Toml,
    /// YAML, feature `yaml`; extension `.yaml` or `.yml`.
    Yaml,
    /// JSON, feature `json`; extension `.json`.
    Json,
}

impl Format {
    /// The format a file's extension names, in any case; `None` for any
    /// other extension or none.
    ///
    /// ```
    /// use brownout::policy::Format;
    ///
    /// assert_eq!(Format::from_path("policy.yml".as_ref()), Some(Format::Yaml));
    /// assert_eq!(Format::from_path("policy.ini".as_ref()), None);
    /// ```
    pub fn from_path(path: &Path) -> Option<Self> {
        let extension = path.extension()?.to_str()?;
        [
            ("toml", Format::Toml),
            ("yaml", Format::Yaml),
            ("yml", Format::Yaml),
            ("json", Format::Json),
        ]
        .into_iter()
        .find(|(name, _)| extension.eq_ignore_ascii_case(name))
        .map(|(_, format)| format)
    }

    /// The cargo feature of brownout that reads this format.
    pub const fn feature(self) -> &'static str {
        match self {
            Format::Toml => "toml",
            Format::Yaml => "yaml",
            Format::Json => "json",
        }
    }

    /// Whether this build reads this format.
    pub const fn is_enabled(self) -> bool {
        match self {
            Format::Toml => cfg!(feature = "toml"),
            Format::Yaml => cfg!(feature = "yaml"),
            Format::Json => cfg!(feature = "json"),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Toml => "TOML",
            Format::Yaml => "YAML",
            Format::Json => "JSON",
        })
    }
}

/// serde_path_to_error's rendering of `path` (`.` for the top, `?` for a
/// place it could not name), but with a route key quoted as in the file:
/// `routes."/payments".limit.initial`, not `routes./payments.limit.initial`.
#[cfg(any(feature = "toml", feature = "yaml", feature = "json"))]
fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;

    let segments: Vec<&Segment> = path.iter().collect();
    let in_routes = matches!(segments.first(), Some(Segment::Map { key }) if key == "routes");
    let mut out = String::new();
    for (i, segment) in segments.iter().enumerate() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } if in_routes && i == 1 => out = super::route::route_path(key),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

/// Line and column, from 1, of byte `offset` in `text`; the column counts
/// characters. Never panics, whatever the offset.
#[cfg(feature = "toml")]
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |newline| newline + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

#[cfg(feature = "toml")]
fn parse_toml(text: &str) -> Result<Policy, PolicyError> {
    let error = |field: String, err: toml::de::Error| {
        PolicyError::parse(
            Format::Toml,
            field,
            err.message().trim_end().to_owned(),
            err.span().map(|span| line_column(text, span.start)),
        )
    };
    let document = toml::Deserializer::parse(text).map_err(|err| error(String::new(), err))?;
    serde_path_to_error::deserialize(document)
        .map_err(|err| error(field_path(err.path()), err.into_inner()))
}

#[cfg(feature = "yaml")]
fn parse_yaml(text: &str) -> Result<Policy, PolicyError> {
    let document = serde_yaml_ng::Deserializer::from_str(text);
    match serde_path_to_error::deserialize(document) {
        Ok(policy) => Ok(policy),
        Err(err) => {
            let field = field_path(err.path());
            // serde_yaml_ng writes paths as serde_path_to_error does.
            let yaml_field = err.path().to_string();
            let err = err.into_inner();
            if matches!(err.to_string().as_str(), "EOF while parsing a value") {
                // A document with nothing in it (or only comments).
                return Ok(Policy::default());
            }
            let location = err.location().map(|at| (at.line(), at.column()));
            // serde_yaml_ng's message says the path and the place itself;
            // keep only what is wrong, as the other formats do.
            let mut message = err.to_string();
            if let Some((line, column)) = location {
                let place = format!(" at line {line} column {column}");
                if let Some(start) = message.find(&place) {
                    message.replace_range(start..start + place.len(), "");
                }
            }
            // Its path is the section's for an unknown field, ours names the
            // field itself: drop whichever prefix of ours it starts with.
            let message = prefixes(&yaml_field)
                .find_map(|path| message.strip_prefix(&format!("{path}: ")))
                .unwrap_or(&message);
            Err(PolicyError::parse(
                Format::Yaml,
                field,
                message.to_owned(),
                location,
            ))
        }
    }
}

/// `a.b.c`, `a.b`, `a`: the paths of a field and of its sections, longest first.
#[cfg(feature = "yaml")]
fn prefixes(field: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(field), |path| path.rfind('.').map(|dot| &path[..dot]))
}

#[cfg(feature = "json")]
fn parse_json(text: &str) -> Result<Policy, PolicyError> {
    if text.trim().is_empty() {
        return Ok(Policy::default());
    }
    let error = |field: String, err: serde_json::Error| {
        let location = (err.line() > 0).then(|| (err.line(), err.column()));
        let mut message = err.to_string();
        if let Some((line, column)) = location {
            let place = format!(" at line {line} column {column}");
            if let Some(stripped) = message.strip_suffix(&place) {
                message.truncate(stripped.len());
            }
        }
        // serde_json says column 0 for the start of a line.
        let location = location.map(|(line, column)| (line, column.max(1)));
        PolicyError::parse(Format::Json, field, message, location)
    };
    let mut document = serde_json::Deserializer::from_str(text);
    let policy = serde_path_to_error::deserialize(&mut document)
        .map_err(|err| error(field_path(err.path()), err.into_inner()))?;
    document.end().map_err(|err| error(String::new(), err))?;
    Ok(policy)
}

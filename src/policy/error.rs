//! The error of a policy that cannot be read or does not validate.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::Format;
#[cfg(doc)]
use super::Policy;

/// A policy that could not be read or does not validate.
///
/// Its message names the field by its dotted path in the file
/// (`breaker.open_backoff.jitter`) and quotes the value; read through
/// [`Policy::from_path`], it starts with the file. See the
/// [policy reference](crate::policy#what-errors-look-like) for examples.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A field holds a value outside its range, or one that does not fit
    /// with another field.
    #[error("{}{field}: {value} {problem}", FilePrefix(file))]
    #[non_exhaustive]
    Invalid {
        /// Dotted path of the field, e.g. `breaker.failure_rate`.
        field: String,
        /// The offending value, e.g. `1.5` or `0s`.
        value: String,
        /// What is wrong with it, e.g. `is not in (0, 1]`.
        problem: String,
        /// The file it came from, when read by [`Policy::from_path`].
        file: Option<PathBuf>,
    },
    /// The text is not valid TOML, YAML or JSON, or a field has the wrong
    /// type, an unknown name, or a value that cannot be read (a bad
    /// duration, an unknown mode).
    #[error(
        "{}{}{message} ({format}{})",
        FilePrefix(file),
        FieldPrefix(field),
        Location(*line, *column)
    )]
    #[non_exhaustive]
    Parse {
        /// The format being read.
        format: Format,
        /// Dotted path of the field being read, e.g. `breaker.open_for`;
        /// empty when the problem is at the top of the file or in its syntax.
        field: String,
        /// What is wrong, from the format's parser.
        message: String,
        /// Line of the problem, from 1, when the parser says.
        line: Option<usize>,
        /// Column of the problem, from 1, when the parser says.
        column: Option<usize>,
        /// The file it came from, when read by [`Policy::from_path`].
        file: Option<PathBuf>,
    },
    /// The policy file could not be read.
    #[error("cannot read policy file {}: {source}", file.display())]
    #[non_exhaustive]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// [`Policy::from_path`] cannot tell the format from the file's extension.
    #[error(
        "{}: cannot tell the policy format from {}: use .toml, .yaml, .yml or .json",
        file.display(),
        Extension(file)
    )]
    #[non_exhaustive]
    UnknownFormat {
        /// The file.
        file: PathBuf,
    },
    /// The policy is written in a format this build does not read.
    #[error(
        "{}{format} policies need brownout's `{}` cargo feature, which this build lacks",
        FilePrefix(file),
        format.feature()
    )]
    #[non_exhaustive]
    FormatDisabled {
        /// The format.
        format: Format,
        /// The file, when read by [`Policy::from_path`].
        file: Option<PathBuf>,
    },
}

impl PolicyError {
    /// An [`Invalid`](Self::Invalid) error: `field` holds `value`, which
    /// `problem` (e.g. `is not in (0, 1]`).
    pub(crate) fn invalid(
        field: impl Into<String>,
        value: impl ToString,
        problem: impl Into<String>,
    ) -> Self {
        PolicyError::Invalid {
            field: field.into(),
            value: value.to_string(),
            problem: problem.into(),
            file: None,
        }
    }

    /// Dotted path of the field at fault, e.g. `breaker.failure_rate`, when
    /// the error is about one field.
    pub fn field(&self) -> Option<&str> {
        match self {
            PolicyError::Invalid { field, .. } | PolicyError::Parse { field, .. }
                if !field.is_empty() =>
            {
                Some(field)
            }
            _ => None,
        }
    }

    /// The policy file at fault, when the policy was read by
    /// [`Policy::from_path`].
    pub fn file(&self) -> Option<&Path> {
        match self {
            PolicyError::Invalid { file, .. }
            | PolicyError::Parse { file, .. }
            | PolicyError::FormatDisabled { file, .. } => file.as_deref(),
            PolicyError::Read { file, .. } | PolicyError::UnknownFormat { file } => Some(file),
        }
    }

    /// Line and column (from 1) of the problem in the text, when the
    /// format's parser says.
    pub fn line_column(&self) -> Option<(usize, usize)> {
        match *self {
            PolicyError::Parse {
                line: Some(line),
                column: Some(column),
                ..
            } => Some((line, column)),
            _ => None,
        }
    }

    /// The same error, said to come from `path`.
    pub(super) fn in_file(mut self, path: &Path) -> Self {
        match &mut self {
            PolicyError::Invalid { file, .. }
            | PolicyError::Parse { file, .. }
            | PolicyError::FormatDisabled { file, .. } => *file = Some(path.to_owned()),
            PolicyError::Read { .. } | PolicyError::UnknownFormat { .. } => {}
        }
        self
    }

    /// A [`Parse`](Self::Parse) error at `field` (serde_path_to_error's
    /// rendering of the path: `.` for the top).
    #[cfg(any(feature = "toml", feature = "yaml", feature = "json"))]
    pub(super) fn parse(
        format: Format,
        field: String,
        message: String,
        line_column: Option<(usize, usize)>,
    ) -> Self {
        // serde_path_to_error says `.` for the top and `?` for a place it
        // could not name (inside a YAML syntax error, say).
        let mut field = field.as_str();
        while let Some(known) = field.strip_suffix(".?") {
            field = known;
        }
        if field == "." || field == "?" {
            field = "";
        }
        PolicyError::Parse {
            format,
            field: field.to_owned(),
            message: plain_types(format, message),
            line: line_column.map(|(line, _)| line),
            column: line_column.map(|(_, column)| column),
            file: None,
        }
    }
}

/// serde says `expected struct BreakerPolicy` when a section is not one,
/// and `expected a map` when `routes` is not one; say it in the format's
/// words.
#[cfg(any(feature = "toml", feature = "yaml", feature = "json"))]
fn plain_types(format: Format, message: String) -> String {
    const RUST: &str = "expected struct ";
    const MAP: &str = "expected a map";
    let section = match format {
        Format::Toml => "expected a table",
        Format::Yaml => "expected a mapping",
        Format::Json => "expected an object",
    };
    if let Some(start) = message.find(RUST) {
        let name_end = message[start + RUST.len()..]
            .find(|c: char| !c.is_alphanumeric() && c != '_')
            .map_or(message.len(), |end| start + RUST.len() + end);
        return format!("{}{section}{}", &message[..start], &message[name_end..]);
    }
    match message.strip_suffix(MAP) {
        Some(before) => format!("{before}{section}"),
        None => message,
    }
}

struct FilePrefix<'a>(&'a Option<PathBuf>);

impl fmt::Display for FilePrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(file) => write!(f, "{}: ", file.display()),
            None => Ok(()),
        }
    }
}

struct FieldPrefix<'a>(&'a str);

impl fmt::Display for FieldPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, "{}: ", self.0)
        }
    }
}

struct Location(Option<usize>, Option<usize>);

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (Some(line), Some(column)) => write!(f, " line {line}, column {column}"),
            (Some(line), None) => write!(f, " line {line}"),
            _ => Ok(()),
        }
    }
}

struct Extension<'a>(&'a Path);

impl fmt::Display for Extension<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.extension() {
            Some(extension) => write!(f, "the extension `.{}`", extension.to_string_lossy()),
            None => f.write_str("a name without an extension"),
        }
    }
}

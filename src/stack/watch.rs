//! Reload the policy when its file changes (feature `watch`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};

use crate::policy::PolicyError;

use super::PolicyHandle;

/// How long a file must stay quiet after a change before it is read:
/// editors and deploy tools write a file in several steps.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// Watches a policy file and reloads it into a running stack on change;
/// dropping it stops watching. Made by [`PolicyHandle::watch`].
pub struct PolicyWatcher {
    // Dropping it stops the watcher and its thread.
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
    path: PathBuf,
}

impl fmt::Debug for PolicyWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyWatcher")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl PolicyWatcher {
    /// The file watched.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl PolicyHandle {
    /// Reloads the policy file at `path` whenever it changes (after it has
    /// been quiet for [`DEBOUNCE`]), logging what changed, or the error
    /// naming the field while the policy in force stays. `on_reload` hears
    /// every outcome (pass `|_| {}` if logs are enough).
    ///
    /// The file's directory is watched, not the file, so that editors that
    /// write a new file and rename it over the old one are followed. Reads
    /// of the file (the watcher's own reload among them) are not changes.
    pub fn watch(
        &self,
        path: impl AsRef<Path>,
        on_reload: impl Fn(&Result<(), PolicyError>) + Send + 'static,
    ) -> Result<PolicyWatcher, PolicyError> {
        let path = path.as_ref().to_owned();
        let watch_error = |err: notify::Error| PolicyError::Read {
            file: path.clone(),
            source: std::io::Error::other(err),
        };
        let directory = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = path.file_name().map(ToOwned::to_owned);
        let handle = self.clone();
        let file = path.clone();
        // One call per burst of events, once the burst has been quiet for
        // DEBOUNCE, on the debouncer's thread; one reload per burst.
        let mut debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| {
            let events = match result {
                Ok(events) => events,
                Err(errors) => {
                    for err in errors {
                        tracing::warn!(%err, file = %file.display(), "brownout: watching the policy file");
                    }
                    return;
                }
            };
            // Access events (open, close) are reads, not changes: our own
            // reload reads the file, and must not trigger another one.
            let changed = events.iter().any(|event| {
                !event.kind.is_access()
                    && event
                        .paths
                        .iter()
                        .any(|changed| changed.file_name() == name.as_deref())
            });
            if !changed {
                return;
            }
            let outcome = handle.reload(&file);
            match &outcome {
                Ok(()) => tracing::info!(file = %file.display(), "brownout: policy file reloaded"),
                Err(err) => tracing::error!(%err, "brownout: policy file not reloaded; the policy in force stays"),
            }
            on_reload(&outcome);
        })
        .map_err(watch_error)?;
        debouncer
            .watch(&directory, RecursiveMode::NonRecursive)
            .map_err(watch_error)?;
        Ok(PolicyWatcher {
            _debouncer: debouncer,
            path,
        })
    }
}

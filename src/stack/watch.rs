//! Reload the policy when its file changes (feature `watch`).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::policy::PolicyError;

use super::PolicyHandle;

/// How long a file must stay quiet after a change before it is read:
/// editors and deploy tools write a file in several steps.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// Watches a policy file and reloads it into a running stack on change;
/// dropping it stops watching. Made by [`PolicyHandle::watch`].
#[derive(Debug)]
pub struct PolicyWatcher {
    // Dropped first: closes the event channel, which ends the thread.
    _watcher: notify::RecommendedWatcher,
    path: PathBuf,
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
    /// write a new file and rename it over the old one are followed.
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
        let (events, changes) = mpsc::channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event {
                    let ours = event
                        .paths
                        .iter()
                        .any(|changed| changed.file_name() == name.as_deref());
                    if ours && !event.kind.is_access() {
                        // The receiver is gone only when the watcher is being
                        // dropped: nothing to do then.
                        let _ = events.send(());
                    }
                }
            })
            .map_err(watch_error)?;
        watcher
            .watch(&directory, RecursiveMode::NonRecursive)
            .map_err(watch_error)?;
        let handle = self.clone();
        let file = path.clone();
        std::thread::Builder::new()
            .name("brownout-policy-watch".into())
            .spawn(move || {
                // One reload per burst of changes, once it has settled.
                while changes.recv().is_ok() {
                    while changes.recv_timeout(DEBOUNCE).is_ok() {}
                    let outcome = handle.reload(&file);
                    match &outcome {
                        Ok(()) => tracing::info!(file = %file.display(), "brownout: policy file reloaded"),
                        Err(err) => tracing::error!(%err, "brownout: policy file not reloaded; the policy in force stays"),
                    }
                    on_reload(&outcome);
                }
            })
            .map_err(|source| PolicyError::Read {
                file: path.clone(),
                source,
            })?;
        Ok(PolicyWatcher {
            _watcher: watcher,
            path,
        })
    }
}

//! `reload.watch_config`: a reload, as SIGHUP starts one, whenever the config file or
//! a file it names (`file:` secrets, TLS files) changes its contents.
//!
//! The directories holding them are watched, not the files: editors replace a file
//! by renaming a new one over it, and Kubernetes updates a mounted ConfigMap or Secret
//! by swapping a `..data` symlink, so the file itself never changes in place. Events
//! come in bursts (write, rename, chmod; several files of one ConfigMap), so a reload
//! is asked for once they have been quiet for `QUIET`, and only when what the files
//! hold differs from what the last look saw: a touch or an unrelated file in the same
//! directory reloads nothing.

use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// How long the watched directories must be quiet before their files are read.
const QUIET: Duration = Duration::from_millis(300);

/// Watches `files`; sends on `reload` each time their contents changed. The watch
/// lasts as long as the returned watcher.
pub fn spawn(
    files: Vec<PathBuf>,
    reload: mpsc::UnboundedSender<()>,
) -> Result<RecommendedWatcher, String> {
    // Absolute, so they compare with the paths of the events (the watched directory
    // joined with an entry's name); symlinks are left as they are, since they are
    // what changes.
    let files: Vec<PathBuf> = files
        .iter()
        .map(|file| std::path::absolute(file).unwrap_or_else(|_| file.clone()))
        .collect();
    let entries = entries_of(&files);
    let (events, mut seen) = mpsc::unbounded_channel::<()>();
    // An event on an entry of the files (the file, or the symlink it goes through)
    // may be a change, and so may an error of the watch itself (an overflowed queue):
    // each means look again. Reads are no change, and neither is anything else in
    // those directories (eventd's own log file, say, whose every line would otherwise
    // ask for the next look).
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let worth_a_look = match event {
            Ok(event) => {
                !event.kind.is_access()
                    && (event.paths.is_empty()
                        || event.paths.iter().any(|path| entries.contains(path)))
            }
            Err(_) => true,
        };
        if worth_a_look {
            let _ = events.send(());
        }
    })
    .map_err(|error| format!("cannot watch files: {error}"))?;
    let directories: BTreeSet<PathBuf> = files.iter().map(|file| directory_of(file)).collect();
    for directory in &directories {
        watcher
            .watch(directory, RecursiveMode::NonRecursive)
            .map_err(|error| format!("cannot watch {}: {error}", directory.display()))?;
    }
    tracing::info!(
        files = ?files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "watching the config and the files it names; a change reloads"
    );
    tokio::spawn(async move {
        let mut last = fingerprint(files.clone()).await;
        while seen.recv().await.is_some() {
            // Wait out the burst.
            while let Ok(Some(())) = tokio::time::timeout(QUIET, seen.recv()).await {}
            let now = fingerprint(files.clone()).await;
            if now.is_none() {
                continue;
            }
            if now == last {
                tracing::info!("the watched files hold what they held; nothing to reload");
                continue;
            }
            last = now;
            if reload.send(()).is_err() {
                return;
            }
        }
    });
    Ok(watcher)
}

/// The directory entries a change of `files` shows on: each file, and for a file that
/// is a symlink the entry its relative target starts with (Kubernetes mounts
/// `eventd.toml -> ..data/eventd.toml` and swaps `..data`).
fn entries_of(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut entries = BTreeSet::new();
    for file in files {
        entries.insert(file.clone());
        if let Ok(target) = std::fs::read_link(file) {
            if let Some(std::path::Component::Normal(first)) = target.components().next() {
                entries.insert(directory_of(file).join(first));
            }
        }
    }
    entries
}

/// The directory to watch for `file`: its parent, or the working directory.
fn directory_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// What the files hold now, as one number; a file that cannot be read counts as its
/// error, so one that appears or goes away is a change too. `None` when the reading
/// task failed, which tells nothing.
async fn fingerprint(files: Vec<PathBuf>) -> Option<u64> {
    tokio::task::spawn_blocking(move || {
        let mut hasher = DefaultHasher::new();
        for file in &files {
            match std::fs::read(file) {
                Ok(bytes) => bytes.hash(&mut hasher),
                Err(error) => error.kind().hash(&mut hasher),
            }
        }
        hasher.finish()
    })
    .await
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `file:` secret rewritten in place (as a rotation by hand does) asks for a
    /// reload, as the config file does.
    #[tokio::test]
    async fn a_changed_secret_file_asks_for_a_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("eventd.toml");
        let secrets = dir.path().join("secrets");
        std::fs::create_dir(&secrets).expect("secrets dir");
        let password = secrets.join("password");
        std::fs::write(&config, "[log]\n").expect("config");
        std::fs::write(&password, "first").expect("password");
        let (reload, mut asked) = mpsc::unbounded_channel();
        let _watcher = spawn(vec![config, password.clone()], reload).expect("watch");
        // The watch is in place once the first fingerprint is taken; rewriting until
        // a reload is asked for covers a write that lands before that.
        let asked_for = tokio::time::timeout(Duration::from_secs(10), async {
            for round in 0.. {
                std::fs::write(&password, format!("rotated {round}")).expect("rotate");
                if tokio::time::timeout(QUIET * 4, asked.recv()).await.is_ok() {
                    return;
                }
            }
        })
        .await;
        assert!(
            asked_for.is_ok(),
            "no reload asked for a changed secret file"
        );
    }
}

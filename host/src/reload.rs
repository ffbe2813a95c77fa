//! Hot reload: rescans the tasks directory and brings the scheduler in line,
//! on file changes (watched, debounced), on SIGHUP and on
//! `POST /api/housekeeper/reload`.
//!
//! Unchanged components cost nothing to reload (the runtime shares compiled
//! code by content hash and caches it on disk). A file that fails to load
//! never replaces a working version: the old one keeps running and the error
//! stays visible until the file is fixed. A half-written file simply fails
//! to load; the write's next event triggers another rescan that succeeds.
//!
//! Only changes that can alter what is loaded start a rescan (see
//! [`wants_rescan`]): the rescan itself opens and reads every file, and
//! reacting to those reads would rescan forever.

use crate::loader::{self, LoadErrors};
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::scheduler::{Scheduler, TaskDef};
use notify_debouncer_full::notify::event::{AccessKind, AccessMode, EventKind};
use notify_debouncer_full::notify::{Event, RecursiveMode};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long the directory must be quiet before a rescan. Short: a file
/// caught half-written fails to load harmlessly and its next write event
/// brings another rescan.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

/// Why the tasks directory was rescanned (the `cause` label of
/// `housekeeper_task_rescans_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RescanCause {
    /// The one rescan when watching starts, for changes made while loading.
    Startup,
    /// A watched change to a file the catalog reads.
    File,
    /// The watcher lost events (queue overflow) or reported an error.
    Overflow,
    /// A reload request from the process running the service: SIGHUP
    /// (`main.rs`).
    Signal,
    /// `POST /api/housekeeper/reload`.
    Api,
    /// `POST /api/housekeeper/reload` on another replica sharing the
    /// database.
    Cluster,
    /// Components that were still compiling when an earlier rescan stopped
    /// waiting for them are done.
    Compiled,
}

impl RescanCause {
    pub fn as_str(self) -> &'static str {
        match self {
            RescanCause::Startup => "startup",
            RescanCause::File => "file",
            RescanCause::Overflow => "overflow",
            RescanCause::Signal => "signal",
            RescanCause::Api => "api",
            RescanCause::Cluster => "cluster",
            RescanCause::Compiled => "compiled",
        }
    }
}

/// Whether a file event in `dir` can change what a rescan loads.
///
/// Yes for creating, writing (and finishing a write), renaming, removing or
/// changing the attributes of a `.toml` or `.wasm` file (the only files the
/// catalog reads), of a `..`-prefixed entry (the symlink Kubernetes swaps
/// atomically when a ConfigMap or Secret volume changes), or of the
/// directory itself, and for lost events. No for opening, reading and
/// closing without writing (what the rescan itself does), and for any other
/// name: editor swap and backup files, `.partial` downloads, the store and
/// the compile cache should they live there.
pub fn wants_rescan(event: &Event, dir: &Path) -> bool {
    if event.need_rescan() {
        return true;
    }
    let changes = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Any | EventKind::Other => true,
    };
    changes && event.paths.iter().any(|p| p == dir || is_catalog_path(p))
}

fn is_catalog_path(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy());
    let ext = path.extension().and_then(|e| e.to_str());
    matches!(ext, Some("toml" | "wasm")) || name.is_some_and(|n| n.starts_with(".."))
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub replaced: Vec<String>,
    pub removed: Vec<String>,
    /// Task names whose files failed to load, with the error.
    #[serde(rename = "loadErrors")]
    pub load_errors: BTreeMap<String, String>,
}

pub struct Reloader {
    runtime: Runtime,
    /// Where `describe()` runs: the guests' runtime.
    guests: tokio::runtime::Handle,
    dir: PathBuf,
    scheduler: Scheduler,
    load_errors: LoadErrors,
    metrics: Metrics,
    /// One rescan at a time.
    busy: tokio::sync::Mutex<()>,
    /// Set once the first load has registered the tasks and started the
    /// scheduler (`/ready` says 503 until then).
    loaded: std::sync::atomic::AtomicBool,
    /// Component files still compiling for an earlier rescan: not loaded
    /// again until they are done.
    compiling: std::sync::Mutex<BTreeSet<PathBuf>>,
}

/// How long a rescan waits for components to compile. One still compiling
/// after this is applied by a rescan of its own when it is done, so it
/// delays only its own tasks.
pub const SETTLE: Duration = Duration::from_secs(2);

impl Reloader {
    pub fn new(
        runtime: Runtime,
        guests: tokio::runtime::Handle,
        dir: PathBuf,
        scheduler: Scheduler,
        load_errors: LoadErrors,
        metrics: Metrics,
    ) -> Self {
        Reloader {
            runtime,
            guests,
            dir,
            scheduler,
            load_errors,
            metrics,
            busy: tokio::sync::Mutex::new(()),
            loaded: Default::default(),
            compiling: Default::default(),
        }
    }

    /// The first load at start: compiles and describes every task,
    /// registers those that load and starts the scheduler. `serve` answers
    /// HTTP meanwhile (a slow compile never keeps `/health` down); `/ready`
    /// says 503 and rescans wait until it is done.
    pub async fn load_and_start(&self) -> anyhow::Result<()> {
        let _one_at_a_time = self.busy.lock().await;
        let (defs, errors) = loader::load_tasks(&self.runtime, &self.dir, &self.guests).await?;
        loader::log_changes(&BTreeMap::new(), &errors);
        tracing::info!(tasks = defs.len(), failed = errors.len(), dir = %self.dir.display(), "tasks loaded");
        *self.load_errors.write().unwrap_or_else(|p| p.into_inner()) = errors;
        self.prepare_roles(&defs, None);
        self.scheduler.register(defs).await?;
        self.scheduler.start().await?;
        self.loaded
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Waits for the loads a rescan stopped waiting for, then rescans once
    /// more to apply them (the compiled code is held meanwhile, so that
    /// rescan finds it without compiling again).
    fn finish_later(self: &Arc<Self>, pending: loader::Pending, skip: &BTreeSet<PathBuf>) {
        if pending.loads.is_empty() {
            return;
        }
        let paths: BTreeSet<PathBuf> = pending.paths.difference(skip).cloned().collect();
        tracing::info!(tasks = ?pending.names, "still compiling; applied when done");
        self.compiling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(paths.iter().cloned());
        let this = self.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            for load in pending.loads {
                held.push(load.await);
            }
            this.compiling
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|p| !paths.contains(p));
            let rescan: std::pin::Pin<
                Box<dyn std::future::Future<Output = anyhow::Result<ReloadSummary>> + Send>,
            > = Box::pin(this.reload(RescanCause::Compiled));
            if let Err(e) = rescan.await {
                tracing::error!(error = %format!("{e:#}"), "reload failed");
            }
            drop(held);
        });
    }

    /// Brings the PostgreSQL roles of the loaded tasks (of `only`, when
    /// given) in line with their grants, in the background: a database that
    /// is down delays nothing; each run checks again.
    fn prepare_roles(&self, defs: &[TaskDef], only: Option<&BTreeSet<String>>) {
        let tasks: Vec<(String, crate::manifest::DatabaseGrant)> = defs
            .iter()
            .filter(|d| only.is_none_or(|o| o.contains(&d.manifest.name)))
            .filter_map(|d| Some((d.manifest.name.clone(), d.manifest.database.clone()?)))
            .collect();
        if tasks.is_empty() {
            return;
        }
        let connections = self.runtime.connections().clone();
        tokio::spawn(async move {
            crate::capabilities::sql::roles::prepare(&connections, &tasks).await;
        });
    }

    /// Whether the first load is done.
    pub fn loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::Acquire)
    }

    pub async fn reload(self: &Arc<Self>, cause: RescanCause) -> anyhow::Result<ReloadSummary> {
        let _one_at_a_time = self.busy.lock().await;
        self.metrics.rescanned(cause.as_str());
        tracing::debug!(cause = cause.as_str(), "rescanning the tasks directory");
        let skip = self
            .compiling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (defs, errors, pending) =
            loader::load_tasks_within(&self.runtime, &self.dir, &self.guests, Some(SETTLE), &skip)
                .await?;
        let registered: BTreeSet<String> =
            self.scheduler.tasks().into_iter().map(|t| t.name).collect();
        // A task whose file failed, or is still compiling, keeps the
        // version it has.
        let keep: BTreeSet<String> = errors
            .keys()
            .chain(&pending.names)
            .filter(|n| registered.contains(*n))
            .cloned()
            .collect();
        self.finish_later(pending, &skip);
        let changed: BTreeSet<String> = {
            let before = self.scheduler.tasks();
            defs.iter()
                .filter(|d| {
                    !before.iter().any(|t| {
                        t.name == d.manifest.name && t.def.manifest.database == d.manifest.database
                    })
                })
                .map(|d| d.manifest.name.clone())
                .collect()
        };
        self.prepare_roles(&defs, Some(&changed));
        let (added, replaced, removed) = self.scheduler.apply(defs, &keep).await?;
        let before = std::mem::replace(
            &mut *self.load_errors.write().unwrap_or_else(|p| p.into_inner()),
            errors.clone(),
        );
        loader::log_changes(&before, &errors);
        if !(added.is_empty() && replaced.is_empty() && removed.is_empty()) {
            tracing::info!(?added, ?replaced, ?removed, "tasks reloaded");
        }
        for name in keep.iter().filter(|n| before.get(*n) != errors.get(*n)) {
            tracing::warn!(task = %name, "new version failed to load; the previous one stays");
        }
        Ok(ReloadSummary {
            added,
            replaced,
            removed,
            load_errors: errors,
        })
    }

    /// Starts watching the directory (before returning, so no change made
    /// after this call is missed) and rescans on every change that
    /// [`wants_rescan`] until `stop`. One rescan runs at once to catch
    /// changes made since the last scan.
    pub fn watch(
        self: Arc<Self>,
        stop: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<RescanCause>(1);
        let notify = tx.clone();
        let dir = self.dir.clone();
        let mut debouncer = notify_debouncer_full::new_debouncer(
            DEBOUNCE,
            None,
            move |result: notify_debouncer_full::DebounceEventResult| {
                let cause = match result {
                    Ok(events) if events.iter().any(|e| e.need_rescan()) => {
                        Some(RescanCause::Overflow)
                    }
                    Ok(events) => events
                        .iter()
                        .any(|e| wants_rescan(e, &dir))
                        .then_some(RescanCause::File),
                    Err(errors) => {
                        for e in &errors {
                            tracing::warn!(error = %e, "watching the tasks directory");
                        }
                        Some(RescanCause::Overflow)
                    }
                };
                if let Some(cause) = cause {
                    // A full channel already holds a pending rescan.
                    let _ = notify.try_send(cause);
                }
            },
        )?;
        debouncer.watch(&self.dir, RecursiveMode::NonRecursive)?;
        let _ = tx.try_send(RescanCause::Startup);
        Ok(tokio::spawn(async move {
            let _debouncer = debouncer;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    got = rx.recv() => {
                        let Some(cause) = got else { return };
                        if let Err(e) = self.reload(cause).await {
                            tracing::error!(error = %format!("{e:#}"), "reload failed");
                        }
                    }
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify_debouncer_full::notify::event::{
        CreateKind, DataChange, Flag, MetadataKind, ModifyKind, RemoveKind, RenameMode,
    };

    fn event(kind: EventKind, names: &[&str]) -> Event {
        let mut e = Event::new(kind);
        for n in names {
            e = e.add_path(Path::new("/tasks").join(n));
        }
        e
    }

    const CHANGES: [EventKind; 9] = [
        EventKind::Create(CreateKind::File),
        EventKind::Create(CreateKind::Any),
        EventKind::Modify(ModifyKind::Data(DataChange::Content)),
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::Permissions)),
        EventKind::Modify(ModifyKind::Name(RenameMode::To)),
        EventKind::Modify(ModifyKind::Name(RenameMode::From)),
        EventKind::Modify(ModifyKind::Any),
        EventKind::Remove(RemoveKind::File),
        EventKind::Access(AccessKind::Close(AccessMode::Write)),
    ];

    /// What a rescan does to every file: open, read, close.
    const READS: [EventKind; 6] = [
        EventKind::Access(AccessKind::Open(AccessMode::Any)),
        EventKind::Access(AccessKind::Open(AccessMode::Read)),
        EventKind::Access(AccessKind::Read),
        EventKind::Access(AccessKind::Close(AccessMode::Read)),
        EventKind::Access(AccessKind::Close(AccessMode::Any)),
        EventKind::Access(AccessKind::Any),
    ];

    const CATALOG_FILES: [&str; 5] = [
        "task.toml",
        "task.wasm",
        ".hidden.toml",
        "..data",
        "..2026_11_26_10_00_00.123",
    ];

    const IGNORED_FILES: [&str; 12] = [
        "task.toml.swp",
        ".task.toml.swp",
        ".task.toml.swx",
        "task.toml~",
        "#task.toml#",
        "4913",
        "task.wasm.partial",
        "task.wasm.tmp",
        "housekeeper.db",
        "housekeeper.db-wal",
        "cache",
        "README",
    ];

    #[test]
    fn changes_to_catalog_files_rescan() {
        for kind in CHANGES {
            for name in CATALOG_FILES {
                assert!(
                    wants_rescan(&event(kind, &[name]), Path::new("/tasks")),
                    "{kind:?} {name}"
                );
            }
        }
    }

    #[test]
    fn reads_never_rescan() {
        for kind in READS {
            for name in CATALOG_FILES.iter().chain(&IGNORED_FILES) {
                assert!(
                    !wants_rescan(&event(kind, &[name]), Path::new("/tasks")),
                    "{kind:?} {name}"
                );
            }
        }
    }

    #[test]
    fn ignored_files_never_rescan() {
        for kind in CHANGES {
            for name in IGNORED_FILES {
                assert!(
                    !wants_rescan(&event(kind, &[name]), Path::new("/tasks")),
                    "{kind:?} {name}"
                );
            }
        }
    }

    #[test]
    fn a_rename_into_a_catalog_name_rescans_from_either_side() {
        let both = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        let dir = Path::new("/tasks");
        assert!(wants_rescan(
            &event(both, &["t.wasm.partial", "t.wasm"]),
            dir
        ));
        assert!(wants_rescan(&event(both, &["t.toml", "t.toml~"]), dir));
        assert!(!wants_rescan(&event(both, &["a.partial", "a.tmp"]), dir));
    }

    #[test]
    fn the_directory_itself_and_lost_events_rescan() {
        let dir = Path::new("/tasks");
        let removed = Event::new(EventKind::Remove(RemoveKind::Folder)).add_path(dir.into());
        assert!(wants_rescan(&removed, dir));
        let overflow = Event::new(EventKind::Other).set_flag(Flag::Rescan);
        assert!(wants_rescan(&overflow, dir));
    }
}

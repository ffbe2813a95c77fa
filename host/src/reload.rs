//! Hot reload: rescans the tasks directory and brings the scheduler in line,
//! on file changes (watched, debounced), on SIGHUP and on
//! `POST /api/housekeeper/reload`.
//!
//! Unchanged components cost nothing to reload (the runtime shares compiled
//! code by content hash and caches it on disk). A file that fails to load
//! never replaces a working version: the old one keeps running and the error
//! stays visible until the file is fixed. A half-written file simply fails
//! to load; the write's next event triggers another rescan that succeeds.

use crate::runtime::Runtime;
use crate::scheduler::Scheduler;
use crate::server::load_tasks;
use notify_debouncer_full::notify::RecursiveMode;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How long the directory must be quiet before a rescan. Short: a file
/// caught half-written fails to load harmlessly and its next write event
/// brings another rescan.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

/// Load errors by task name, shared with the API.
pub type LoadErrors = Arc<RwLock<BTreeMap<String, String>>>;

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
    dir: PathBuf,
    scheduler: Scheduler,
    load_errors: LoadErrors,
    /// One rescan at a time.
    busy: tokio::sync::Mutex<()>,
}

impl Reloader {
    pub fn new(
        runtime: Runtime,
        dir: PathBuf,
        scheduler: Scheduler,
        load_errors: LoadErrors,
    ) -> Self {
        Reloader {
            runtime,
            dir,
            scheduler,
            load_errors,
            busy: tokio::sync::Mutex::new(()),
        }
    }

    pub async fn reload(&self) -> anyhow::Result<ReloadSummary> {
        let _one_at_a_time = self.busy.lock().await;
        let (defs, errors) = load_tasks(&self.runtime, &self.dir).await?;
        let registered: BTreeSet<String> =
            self.scheduler.tasks().into_iter().map(|t| t.name).collect();
        let keep: BTreeSet<String> = errors
            .keys()
            .filter(|n| registered.contains(*n))
            .cloned()
            .collect();
        let (added, replaced, removed) = self.scheduler.apply(defs, &keep).await?;
        *self.load_errors.write().unwrap_or_else(|p| p.into_inner()) = errors.clone();
        if !(added.is_empty() && replaced.is_empty() && removed.is_empty()) {
            tracing::info!(?added, ?replaced, ?removed, "tasks reloaded");
        }
        for name in &keep {
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
    /// after this call is missed) and rescans on every change until `stop`.
    /// One rescan runs at once to catch changes made since the last scan.
    pub fn watch(
        self: Arc<Self>,
        stop: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let notify = tx.clone();
        let mut debouncer = notify_debouncer_full::new_debouncer(DEBOUNCE, None, move |result| {
            if let Ok(events) = result {
                let events: Vec<notify_debouncer_full::DebouncedEvent> = events;
                if !events.is_empty() {
                    // A full channel already holds a pending rescan.
                    let _ = notify.try_send(());
                }
            }
        })?;
        debouncer.watch(&self.dir, RecursiveMode::NonRecursive)?;
        let _ = tx.try_send(());
        Ok(tokio::spawn(async move {
            let _debouncer = debouncer;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    got = rx.recv() => {
                        if got.is_none() {
                            return;
                        }
                        if let Err(e) = self.reload().await {
                            tracing::error!(error = %format!("{e:#}"), "reload failed");
                        }
                    }
                }
            }
        }))
    }
}

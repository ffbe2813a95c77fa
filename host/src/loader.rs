//! Loading the tasks directory: compile and describe every task it defines.
//! `serve` calls it at start and hot reload on every rescan; failures are
//! values by task name, so one broken file never stops the others.
//! `describe()` is guest code: it runs on the runtime the caller gives for
//! guests, never on the caller's (which serves HTTP in `serve`).

use crate::catalog::Catalog;
use crate::model::TaskInfo;
use crate::runtime::{Runtime, TaskComponent};
use crate::scheduler::TaskDef;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio::runtime::Handle;

/// Load errors by task (or file) name, shared with the API.
pub type LoadErrors = Arc<RwLock<BTreeMap<String, String>>>;

/// A component's compiled code and what its `describe()` said.
pub type Loaded = Result<(TaskComponent, TaskInfo), String>;

/// Components still compiling when a rescan stopped waiting for them.
#[derive(Default)]
pub struct Pending {
    /// The tasks that use them.
    pub names: BTreeSet<String>,
    /// Their files.
    pub paths: BTreeSet<PathBuf>,
    /// Their loads, still running.
    pub loads: Vec<tokio::task::JoinHandle<Loaded>>,
}

/// Compiles and describes every task in `dir`, calling `describe()` on
/// `guests`. Failures are returned by task (or file) name; the caller
/// decides what to log.
pub async fn load_tasks(
    runtime: &Runtime,
    dir: &Path,
    guests: &Handle,
) -> anyhow::Result<(Vec<TaskDef>, BTreeMap<String, String>)> {
    let (defs, errors, _) = load_tasks_within(runtime, dir, guests, None, &BTreeSet::new()).await?;
    Ok((defs, errors))
}

/// Like [`load_tasks`], but stops waiting for components after `settle`:
/// those still compiling (and those in `skip`, already compiling for an
/// earlier rescan) are returned as [`Pending`], so that one slow compile
/// delays only its own tasks.
pub async fn load_tasks_within(
    runtime: &Runtime,
    dir: &Path,
    guests: &Handle,
    settle: Option<std::time::Duration>,
    skip: &BTreeSet<PathBuf>,
) -> anyhow::Result<(Vec<TaskDef>, BTreeMap<String, String>, Pending)> {
    let catalog = Catalog::scan(dir).map_err(|e| {
        anyhow::anyhow!(
            "HOUSEKEEPER_TASKS_DIR={}: cannot read it: {e}",
            dir.display()
        )
    })?;
    let mut errors = BTreeMap::new();
    for problem in &catalog.problems {
        let name = problem
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        errors.insert(name, problem.message.clone());
    }
    // Each distinct component is compiled and described once, several at a
    // time: a component that is slow to compile (up to the compile bounds)
    // does not hold up the others' compiling.
    let paths: BTreeSet<PathBuf> = catalog
        .tasks
        .values()
        .map(|e| e.component_path.clone())
        .filter(|p| !skip.contains(p))
        .collect();
    let slots = Arc::new(tokio::sync::Semaphore::new(
        std::thread::available_parallelism().map_or(2, |n| n.get()),
    ));
    let mut loads: Vec<(PathBuf, tokio::task::JoinHandle<Loaded>)> = paths
        .into_iter()
        .map(|path| {
            let (runtime, guests, slots) = (runtime.clone(), guests.clone(), slots.clone());
            let file = path.clone();
            let load = tokio::spawn(async move {
                let _slot = slots.acquire_owned().await;
                load_component(&runtime, &file, &guests).await
            });
            (path, load)
        })
        .collect();
    let deadline = settle.map(|d| tokio::time::Instant::now() + d);
    let mut loaded: BTreeMap<PathBuf, Loaded> = BTreeMap::new();
    let mut pending = Pending {
        paths: skip.clone(),
        ..Pending::default()
    };
    for (path, mut load) in loads.drain(..) {
        let finished = match deadline {
            None => Some((&mut load).await),
            Some(at) => tokio::time::timeout_at(at, &mut load).await.ok(),
        };
        match finished {
            Some(result) => {
                let result = result.unwrap_or_else(|e| Err(format!("loading failed: {e}")));
                loaded.insert(path, result);
            }
            None => {
                pending.paths.insert(path);
                pending.loads.push(load);
            }
        }
    }
    let mut defs = Vec::new();
    for (name, entry) in catalog.tasks {
        match loaded.get(&entry.component_path) {
            Some(Ok((component, info))) => defs.push(TaskDef {
                manifest: entry.manifest,
                component: component.clone(),
                info: info.clone(),
            }),
            Some(Err(e)) => {
                errors.insert(name, e.clone());
            }
            None => {
                pending.names.insert(name);
            }
        }
    }
    Ok((defs, errors, pending))
}

/// Compiles the component at `path` and calls its `describe()` on
/// `guests`.
pub async fn load_component(
    runtime: &Runtime,
    path: &Path,
    guests: &Handle,
) -> Result<(TaskComponent, TaskInfo), String> {
    let rt = runtime.clone();
    let file = path.to_owned();
    let component = tokio::task::spawn_blocking(move || rt.load_file(&file))
        .await
        .map_err(|e| format!("compiling panicked: {e}"))?
        .map_err(|e| e.to_string())?;
    let (rt, described) = (runtime.clone(), component.clone());
    let info = guests
        .spawn(async move { rt.describe(&described).await })
        .await
        .map_err(|e| format!("describe() did not finish: {e}"))?
        .map_err(|e| e.to_string())?;
    Ok((component, info))
}

/// Logs the load errors in `now` that are new or differ from `before`, and
/// the tasks whose error went away (fixed or removed): a file that keeps failing the same way
/// is logged once, not on every rescan.
pub fn log_changes(before: &BTreeMap<String, String>, now: &BTreeMap<String, String>) {
    for (name, error) in now {
        if before.get(name) != Some(error) {
            tracing::error!(task = %name, error = %error, "task failed to load");
        }
    }
    for name in before.keys().filter(|n| !now.contains_key(*n)) {
        tracing::info!(task = %name, "load error cleared");
    }
}

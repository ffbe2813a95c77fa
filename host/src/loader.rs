//! Loading the tasks directory: compile and describe every task it defines.
//! `serve` calls it at start and hot reload on every rescan; failures are
//! values by task name, so one broken file never stops the others.
//! `describe()` is guest code: it runs on the runtime the caller gives for
//! guests, never on the caller's (which serves HTTP in `serve`).

use crate::catalog::Catalog;
use crate::model::TaskInfo;
use crate::runtime::{Runtime, TaskComponent};
use crate::scheduler::TaskDef;
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio::runtime::Handle;

/// Load errors by task (or file) name, shared with the API.
pub type LoadErrors = Arc<RwLock<BTreeMap<String, String>>>;

/// Compiles and describes every task in `dir`, calling `describe()` on
/// `guests`. Failures are returned by task (or file) name; the caller
/// decides what to log.
pub async fn load_tasks(
    runtime: &Runtime,
    dir: &Path,
    guests: &Handle,
) -> anyhow::Result<(Vec<TaskDef>, BTreeMap<String, String>)> {
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
    let paths: std::collections::BTreeSet<PathBuf> = catalog
        .tasks
        .values()
        .map(|e| e.component_path.clone())
        .collect();
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
    let loaded: BTreeMap<PathBuf, Result<(TaskComponent, TaskInfo), String>> =
        futures_util::stream::iter(paths)
            .map(|path| async move {
                let result = load_component(runtime, &path, guests).await;
                (path, result)
            })
            .buffer_unordered(parallel)
            .collect()
            .await;
    let mut defs = Vec::new();
    for (name, entry) in catalog.tasks {
        match &loaded[&entry.component_path] {
            Ok((component, info)) => defs.push(TaskDef {
                manifest: entry.manifest,
                component: component.clone(),
                info: info.clone(),
            }),
            Err(e) => {
                errors.insert(name, e.clone());
            }
        }
    }
    Ok((defs, errors))
}

async fn load_component(
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
        .map_err(|(status, message)| format!("{message} ({status})"))?;
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

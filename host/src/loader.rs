//! Loading the tasks directory: compile and describe every task it defines.
//! `serve` calls it at start and hot reload on every rescan; failures are
//! values by task name, so one broken file never stops the others.
//! `describe()` is guest code: it runs on the runtime the caller gives for
//! guests, never on the caller's (which serves HTTP in `serve`).

use crate::catalog::{Catalog, TaskEntry};
use crate::runtime::Runtime;
use crate::scheduler::TaskDef;
use std::collections::BTreeMap;
use std::path::Path;
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
    let mut defs = Vec::new();
    for (name, entry) in catalog.tasks {
        match load_one(runtime, &entry, guests).await {
            Ok(def) => defs.push(def),
            Err(e) => {
                errors.insert(name, e);
            }
        }
    }
    Ok((defs, errors))
}

async fn load_one(
    runtime: &Runtime,
    entry: &TaskEntry,
    guests: &Handle,
) -> Result<TaskDef, String> {
    let rt = runtime.clone();
    let path = entry.component_path.clone();
    let component = tokio::task::spawn_blocking(move || rt.load_file(&path))
        .await
        .map_err(|e| format!("compiling panicked: {e}"))?
        .map_err(|e| e.to_string())?;
    let (rt, described) = (runtime.clone(), component.clone());
    let info = guests
        .spawn(async move { rt.describe(&described).await })
        .await
        .map_err(|e| format!("describe() did not finish: {e}"))?
        .map_err(|(status, message)| format!("{message} ({status})"))?;
    Ok(TaskDef {
        manifest: entry.manifest.clone(),
        component,
        info,
    })
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

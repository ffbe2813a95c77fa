//! The tasks directory: which task names exist, with which manifest and
//! component, and which files failed to load.
//!
//! A task is a manifest `NAME.toml` naming its component (default
//! `NAME.wasm`), or a component with no manifest of its own and no manifest
//! pointing at it, which becomes a task with its file stem as name and no
//! grants.

use crate::manifest::{Manifest, ManifestError};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One task as the tasks directory defines it.
#[derive(Debug, Clone)]
pub struct TaskEntry {
    pub manifest: Manifest,
    /// Absent for a component without a manifest.
    pub manifest_path: Option<PathBuf>,
    pub component_path: PathBuf,
}

impl TaskEntry {
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// A task for a component file given directly: its sidecar manifest
    /// (`FILE.toml`) if there is one, otherwise no grants.
    pub fn for_component_file(path: &Path) -> Result<Self, ManifestError> {
        let sidecar = path.with_extension("toml");
        if sidecar.is_file() {
            let mut manifest = Manifest::load(&sidecar)?;
            // The file given wins over the manifest's `component`.
            manifest.component = file_name(path);
            return Ok(TaskEntry {
                manifest,
                manifest_path: Some(sidecar),
                component_path: path.to_owned(),
            });
        }
        let name = stem(path);
        crate::manifest::validate_task_name(&name).map_err(|message| ManifestError::Invalid {
            path: path.to_owned(),
            message: format!("{message} (a component without a manifest is named after its file)"),
        })?;
        Ok(TaskEntry {
            manifest: Manifest::implicit(&name, &file_name(path)),
            manifest_path: None,
            component_path: path.to_owned(),
        })
    }
}

/// A file in the tasks directory that does not define a usable task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadProblem {
    pub path: PathBuf,
    pub message: String,
}

/// The tasks directory as last read.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub dir: PathBuf,
    /// By task name.
    pub tasks: BTreeMap<String, TaskEntry>,
    pub problems: Vec<LoadProblem>,
}

impl Catalog {
    /// Reads every manifest in `dir` and pairs components with them. Only the
    /// directory itself is read, not subdirectories.
    pub fn scan(dir: &Path) -> std::io::Result<Self> {
        let mut manifests = Vec::new();
        let mut components = BTreeSet::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if !path.is_file() {
                continue;
            }
            match path.extension().and_then(|e| e.to_str()) {
                Some("toml") => manifests.push(path),
                Some("wasm") => {
                    components.insert(file_name(&path));
                }
                _ => {}
            }
        }
        manifests.sort();

        let mut catalog = Catalog {
            dir: dir.to_owned(),
            ..Catalog::default()
        };
        // Components claimed by a manifest, even one that failed to load: a
        // broken manifest must not turn its component into a grant-less task
        // under another configuration.
        let mut claimed = BTreeSet::new();
        for path in manifests {
            claimed.insert(format!("{}.wasm", stem(&path)));
            let manifest = match Manifest::load(&path) {
                Ok(m) => m,
                Err(e) => {
                    catalog.problem(&path, e.to_string());
                    continue;
                }
            };
            claimed.insert(manifest.component.clone());
            let component_path = dir.join(&manifest.component);
            if !component_path.is_file() {
                catalog.problem(
                    &path,
                    format!(
                        "manifest {} names component {}, which does not exist",
                        path.display(),
                        component_path.display()
                    ),
                );
                continue;
            }
            catalog.insert(TaskEntry {
                manifest,
                manifest_path: Some(path),
                component_path,
            });
        }
        for component in components.difference(&claimed) {
            let path = dir.join(component);
            // Named after its file, which anyone who can drop a file can
            // spell: held to the same rule as a manifest's `name`.
            if let Err(message) = crate::manifest::validate_task_name(&stem(&path)) {
                catalog.problem(
                    &path,
                    format!("{message} (a component without a manifest is named after its file)"),
                );
                continue;
            }
            catalog.insert(TaskEntry {
                manifest: Manifest::implicit(&stem(&path), component),
                manifest_path: None,
                component_path: path,
            });
        }
        Ok(catalog)
    }

    /// The task called `name`; the error lists what exists instead.
    pub fn get(&self, name: &str) -> Result<&TaskEntry, String> {
        if let Some(task) = self.tasks.get(name) {
            return Ok(task);
        }
        if let Some(problem) = self.problems.iter().find(|p| stem(&p.path) == name) {
            return Err(format!("task {name:?} failed to load: {}", problem.message));
        }
        let known: Vec<&str> = self.tasks.keys().map(String::as_str).collect();
        Err(format!(
            "no task named {name:?} in {} (known: {})",
            self.dir.display(),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        ))
    }

    fn insert(&mut self, task: TaskEntry) {
        let name = task.name().to_owned();
        if let Some(existing) = self.tasks.get(&name) {
            let first = existing
                .manifest_path
                .as_deref()
                .unwrap_or(&existing.component_path)
                .display()
                .to_string();
            let path = task
                .manifest_path
                .clone()
                .unwrap_or(task.component_path.clone());
            self.problem(
                &path,
                format!("task name {name:?} is already defined by {first}"),
            );
            return;
        }
        self.tasks.insert(name, task);
    }

    fn problem(&mut self, path: &Path, message: String) {
        self.problems.push(LoadProblem {
            path: path.to_owned(),
            message,
        });
    }
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn pairs_manifests_with_components_and_adopts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "partition-maintenance.wasm", "");
        write(
            d,
            "events.toml",
            "component = \"partition-maintenance.wasm\"",
        );
        write(
            d,
            "metrics.toml",
            "component = \"partition-maintenance.wasm\"",
        );
        write(d, "cleanup.wasm", "");
        write(d, "cleanup.toml", "name = \"cleanup-old-logs\"");
        write(d, "loose.wasm", "");
        write(d, "notes.txt", "");

        let catalog = Catalog::scan(d).unwrap();
        assert!(catalog.problems.is_empty(), "{:?}", catalog.problems);
        let names: Vec<_> = catalog.tasks.keys().cloned().collect();
        assert_eq!(names, ["cleanup-old-logs", "events", "loose", "metrics"]);
        assert_eq!(
            catalog.tasks["events"].component_path,
            d.join("partition-maintenance.wasm")
        );
        let loose = &catalog.tasks["loose"];
        assert!(loose.manifest_path.is_none());
        assert!(loose.manifest.dirs.is_empty());
    }

    #[test]
    fn a_broken_manifest_is_reported_and_its_component_not_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "bad.wasm", "");
        write(d, "bad.toml", "shedule = \"@daily\"");
        write(d, "orphan.toml", "");

        let catalog = Catalog::scan(d).unwrap();
        assert!(catalog.tasks.is_empty());
        assert_eq!(catalog.problems.len(), 2);
        let err = catalog.get("bad").unwrap_err();
        assert!(err.contains("shedule"), "{err}");
        let err = catalog.get("orphan").unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        let err = catalog.get("nothing").unwrap_err();
        assert!(err.contains("known: none"), "{err}");
    }

    #[test]
    fn duplicate_names_are_a_problem_not_a_silent_override() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "a.wasm", "");
        write(d, "a.toml", "name = \"same\"");
        write(d, "b.toml", "name = \"same\"\ncomponent = \"a.wasm\"");
        let catalog = Catalog::scan(d).unwrap();
        assert_eq!(catalog.tasks.len(), 1);
        assert!(catalog.problems[0].message.contains("already defined"));
    }

    #[test]
    fn a_component_file_uses_its_sidecar_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "x.wasm", "");
        assert!(
            TaskEntry::for_component_file(&d.join("x.wasm"))
                .unwrap()
                .manifest_path
                .is_none()
        );
        write(d, "x.toml", "name = \"ex\"\n[config]\nk = 1");
        let task = TaskEntry::for_component_file(&d.join("x.wasm")).unwrap();
        assert_eq!(task.name(), "ex");
        assert_eq!(task.manifest.config.len(), 1);
    }
}

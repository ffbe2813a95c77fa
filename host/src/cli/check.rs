//! `housekeeper check`: validates a component, a manifest or every task of
//! a tasks directory, and prints what each task says about itself or what
//! is wrong with it.

use super::{CheckArgs, EXIT_LOAD_ERROR, fail, resolve_task, runtime};
use crate::catalog::{Catalog, TaskEntry};
use crate::runtime::Runtime;
use crate::terminal::{escape, escape_lines};
use std::path::Path;
use std::process::ExitCode;

pub(super) async fn check(args: CheckArgs) -> ExitCode {
    let path = args.path;
    let tasks = if path.is_dir() {
        match Catalog::scan(&path) {
            Ok(catalog) => {
                let mut problems = 0;
                for problem in &catalog.problems {
                    println!(
                        "FAIL {}: {}",
                        escape(&problem.path.display().to_string()),
                        escape_lines(&problem.message)
                    );
                    problems += 1;
                }
                if catalog.tasks.is_empty() && problems == 0 {
                    return fail(format!("no tasks in {}", path.display()));
                }
                (catalog.tasks.into_values().collect::<Vec<_>>(), problems)
            }
            Err(e) => return fail(format!("cannot read {}: {e}", path.display())),
        }
    } else if path.extension().is_some_and(|e| e == "toml") {
        match crate::manifest::Manifest::load(&path) {
            Ok(manifest) => {
                let component_path = path
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join(&manifest.component);
                (
                    vec![TaskEntry {
                        manifest,
                        manifest_path: Some(path.clone()),
                        component_path,
                    }],
                    0,
                )
            }
            Err(e) => return fail(e),
        }
    } else {
        match resolve_task(&path.display().to_string(), Path::new(".")) {
            Ok(task) => (vec![task], 0),
            Err(e) => return fail(e),
        }
    };
    let (tasks, mut problems) = tasks;

    let runtime = match runtime(&args.compile) {
        Ok(r) => r,
        Err(code) => return code,
    };
    for task in &tasks {
        match check_one(&runtime, task).await {
            Ok(text) => println!("ok   {}\n{text}", task.name()),
            Err(e) => {
                println!("FAIL {}: {}", task.name(), escape_lines(&e));
                problems += 1;
            }
        }
    }
    if problems > 0 {
        eprintln!("{problems} problem(s) found");
        ExitCode::from(EXIT_LOAD_ERROR)
    } else {
        ExitCode::SUCCESS
    }
}

async fn check_one(runtime: &Runtime, task: &TaskEntry) -> Result<String, String> {
    // The same steps as the service's: compile (bounded), then describe().
    let guests = tokio::runtime::Handle::current();
    let (component, info) =
        crate::loader::load_component(runtime, &task.component_path, &guests).await?;
    let m = &task.manifest;
    let schedule = m
        .schedule
        .as_ref()
        .map(|s| s.as_str().to_owned())
        .or(info
            .default_schedule
            .as_deref()
            .map(|s| escape(s).into_owned()))
        .unwrap_or_else(|| "(none: manual only)".into());
    let mut lines = vec![
        format!(
            "  component:    {} (sha256:{})",
            escape(&task.component_path.display().to_string()),
            component.hash()
        ),
        format!(
            "  manifest:     {}",
            task.manifest_path
                .as_ref()
                .map_or("(none: no grants)".into(), |p| {
                    escape(&p.display().to_string()).into_owned()
                })
        ),
        format!(
            "  describe():   {} {} - {}",
            escape(&info.name),
            escape(&info.version),
            escape(&info.description)
        ),
        format!("  schedule:     {schedule}"),
    ];
    if !info.capabilities.is_empty() {
        lines.push(format!(
            "  would like:   {}",
            escape(&info.capabilities.join(", "))
        ));
    }
    for dir in &m.dirs {
        lines.push(format!(
            "  grants dir:   {} -> {} ({})",
            escape(&dir.host.display().to_string()),
            escape(&dir.guest),
            dir.mode
        ));
    }
    if let Some(db) = &m.database {
        for (table, verbs) in &db.tables {
            let verbs: Vec<&str> = verbs.iter().map(|v| v.as_str()).collect();
            lines.push(format!(
                "  grants sql:   {}.{} [{}]",
                escape(&db.connection),
                escape(table),
                verbs.join(", ")
            ));
        }
    }
    Ok(lines.join("\n"))
}

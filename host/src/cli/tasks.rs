//! `housekeeper tasks` and `housekeeper runs`: the tasks with their
//! schedule, state, next fire and last status, and a task's recent runs
//! from the store.

use super::{RunsArgs, TasksArgs, fail, load, open_store, runtime};
use crate::catalog::Catalog;
use crate::model::RunStatus;
use crate::schedule::next_fire;
use crate::terminal::{escape, escape_lines};
use std::process::ExitCode;

pub(super) async fn tasks(args: TasksArgs) -> ExitCode {
    let catalog = match Catalog::scan(&args.tasks_dir) {
        Ok(c) => c,
        Err(e) => {
            return fail(format!(
                "cannot read tasks directory {}: {e}",
                args.tasks_dir.display()
            ));
        }
    };
    let store = match open_store(&args.db).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let (settings, stats) = match (store.settings().await, store.stats().await) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return fail(format!("cannot read the store: {e:#}")),
    };
    let runtime = match runtime(&args.compile) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let now = chrono::Utc::now();
    println!(
        "{:<36} {:<16} {:<16} {:<8} {:<22} {}",
        "NAME", "SCHEDULE", "TIMEZONE", "ENABLED", "NEXT FIRE (UTC)", "LAST STATUS"
    );
    for (name, entry) in &catalog.tasks {
        let info = match load(&runtime, &entry.component_path).await {
            Ok(c) => runtime.describe(&c).await.ok(),
            Err(e) => {
                println!("{:<36} load error: {}", escape(name), escape(&e));
                continue;
            }
        };
        let m = &entry.manifest;
        let schedule = m.schedule.clone().or_else(|| {
            info.as_ref()
                .and_then(|i| i.default_schedule.as_deref())
                .and_then(|s| crate::schedule::Schedule::parse(s).ok())
        });
        let tz = m.timezone.unwrap_or(args.timezone);
        let enabled = settings.get(name).map(|s| s.enabled).unwrap_or(m.enabled);
        let next = match (&schedule, enabled) {
            (Some(s), true) => next_fire(s, tz, now)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_else(|| "never".into()),
            (Some(_), false) => "(disabled)".into(),
            (None, _) => "(manual only)".into(),
        };
        let last = stats
            .get(name)
            .and_then(|s| s.last_status)
            .map_or("-", RunStatus::as_str);
        println!(
            "{:<36} {:<16} {:<16} {:<8} {:<22} {}",
            escape(name),
            schedule.as_ref().map(|s| s.as_str()).unwrap_or("-"),
            tz.name(),
            if enabled { "yes" } else { "no" },
            next,
            last
        );
    }
    for problem in &catalog.problems {
        println!(
            "load error: {}: {}",
            escape(&problem.path.display().to_string()),
            escape_lines(&problem.message)
        );
    }
    ExitCode::SUCCESS
}

pub(super) async fn runs(args: RunsArgs) -> ExitCode {
    let store = match open_store(&args.db).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let runs = match store.runs(&args.task, args.limit).await {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot read the store: {e:#}")),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&runs).expect("runs serialize")
        );
        return ExitCode::SUCCESS;
    }
    if runs.is_empty() {
        eprintln!("no runs recorded for {:?}", args.task);
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<8} {:<20} {:<14} {:>10} {:<10} {}",
        "ID", "STARTED (UTC)", "STATUS", "MS", "TRIGGER", "ERROR"
    );
    for r in runs {
        println!(
            "{:<8} {:<20} {:<14} {:>10} {:<10} {}",
            r.id,
            r.started_at.format("%Y-%m-%d %H:%M:%S"),
            r.status,
            r.duration_ms
                .map(|d| d.to_string())
                .unwrap_or_else(|| "-".into()),
            r.triggered_by,
            escape(
                r.error
                    .as_deref()
                    .and_then(|e| e.lines().next())
                    .unwrap_or("")
            )
        );
    }
    ExitCode::SUCCESS
}

//! The task endpoints: the listing (with its cache), one task's detail,
//! its status, running it now and toggling its schedule.

use super::runs::run_summary;
use super::types::*;
use super::{ApiError, AppState, Input, load_errors};
use crate::scheduler::{FireOutcome, TaskView};
use crate::store::TaskStats;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Per-task stats as last read, reused while this process has recorded
/// nothing new and for at most [`StatsCache::MAX_AGE`] (other processes may
/// write to a shared PostgreSQL store); and the task listing last
/// serialized from them, reused while its inputs are the same.
#[derive(Default)]
pub struct StatsCache {
    entry: std::sync::Mutex<
        Option<(
            u64,
            Instant,
            Arc<std::collections::HashMap<String, TaskStats>>,
        )>,
    >,
    /// `GET /tasks` as sent, with the key of what it was made from.
    listing: std::sync::Mutex<Option<(ListingKey, bytes::Bytes)>>,
}

/// Everything a task listing is made of: the scheduler's view
/// ([`Scheduler::fingerprint`]), the load errors, and the stats snapshot
/// (by identity: a new read is a new `Arc`).
#[derive(Clone, Copy, PartialEq, Eq)]
struct ListingKey {
    tasks: u64,
    load_errors: u64,
    stats: usize,
}

impl StatsCache {
    pub const MAX_AGE: Duration = Duration::from_secs(1);

    async fn get(
        &self,
        state: &AppState,
    ) -> Result<Arc<std::collections::HashMap<String, TaskStats>>, ApiError> {
        let generation = state.scheduler.changes();
        if let Some((g, at, stats)) = &*self.entry.lock().unwrap_or_else(|p| p.into_inner()) {
            if *g == generation && at.elapsed() < Self::MAX_AGE {
                return Ok(stats.clone());
            }
        }
        let stats = Arc::new(state.store.stats().await?);
        *self.entry.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((generation, Instant::now(), stats.clone()));
        Ok(stats)
    }
}

fn stats_view(stats: Option<&TaskStats>) -> Stats {
    let s = stats.cloned().unwrap_or_default();
    Stats {
        total_runs: s.total_runs,
        success_count: s.success_count,
        error_count: s.error_count,
        skipped_count: s.skipped_count,
        avg_duration_ms: s.avg_duration_ms.map(|d| d.round() as i64),
        last_run_at: s.last_run_at,
        last_status: s.last_status,
    }
}

fn summary(t: &TaskView, stats: Option<&TaskStats>) -> TaskSummary {
    TaskSummary {
        name: t.name.clone(),
        description: Some(t.def.info.description.clone()),
        schedule: t.schedule.clone(),
        timezone: Some(t.timezone.name().to_owned()),
        enabled: t.enabled,
        is_running: t.running > 0,
        running_count: t.running as u64,
        next_run_at: if t.enabled { t.next_fire } else { None },
        load_error: None,
        stats: stats_view(stats),
    }
}

fn failed_summary(name: &str, error: &str, stats: Option<&TaskStats>) -> TaskSummary {
    TaskSummary {
        name: name.to_owned(),
        description: None,
        schedule: None,
        timezone: None,
        enabled: false,
        is_running: false,
        running_count: 0,
        next_run_at: None,
        load_error: Some(error.to_owned()),
        stats: stats_view(stats),
    }
}

/// Every task, loaded or failing to load, with its stats.
#[utoipa::path(get, path = "/api/housekeeper/tasks", security(("bearer" = [])),
    responses((status = 200, body = TaskList), (status = 401, body = ErrorBody)))]
pub(super) async fn list_tasks(State(state): State<AppState>) -> Result<Response, ApiError> {
    let stats = state.stats_cache.get(&state).await?;
    let errors = load_errors(&state);
    let key = ListingKey {
        tasks: state.scheduler.fingerprint(),
        load_errors: {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            errors.hash(&mut h);
            h.finish()
        },
        stats: Arc::as_ptr(&stats) as usize,
    };
    let cached = state
        .stats_cache
        .listing
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let body = match &*cached {
        Some((k, body)) if *k == key => body.clone(),
        _ => {
            drop(cached);
            let body = bytes::Bytes::from(
                serde_json::to_vec(&task_list(&state, &stats, &errors))
                    .expect("a task list serializes"),
            );
            // Kept only if the scheduler did not change while it was built,
            // so the body is what the key describes.
            if state.scheduler.fingerprint() == key.tasks {
                *state
                    .stats_cache
                    .listing
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some((key, body.clone()));
            }
            body
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

fn task_list(
    state: &AppState,
    stats: &std::collections::HashMap<String, TaskStats>,
    errors: &BTreeMap<String, String>,
) -> TaskList {
    let views = state.scheduler.tasks();
    let mut tasks: Vec<TaskSummary> = views
        .iter()
        .map(|t| TaskSummary {
            // A task can run its previous version while a new one fails.
            load_error: errors.get(&t.name).cloned(),
            ..summary(t, stats.get(&t.name))
        })
        .collect();
    for (name, error) in errors.iter() {
        if !views.iter().any(|t| &t.name == name) {
            tasks.push(failed_summary(name, error, stats.get(name)));
        }
    }
    tasks.sort_by(|a, b| a.name.cmp(&b.name));
    let running = views.iter().filter(|t| t.running > 0).count();
    TaskList {
        total_tasks: tasks.len() as u64,
        running_tasks: running as u64,
        tasks,
    }
}

pub(super) fn find(state: &AppState, name: &str) -> Result<TaskView, ApiError> {
    if let Some(t) = state.scheduler.tasks().into_iter().find(|t| t.name == name) {
        return Ok(t);
    }
    match load_errors(state).get(name) {
        Some(e) => Err(ApiError::Conflict(format!(
            "task {name:?} failed to load: {e}"
        ))),
        None => Err(ApiError::NotFound(format!("no task named {name:?}"))),
    }
}

/// A task's manifest, grants, limits, component and recent history.
#[utoipa::path(get, path = "/api/housekeeper/tasks/{name}", security(("bearer" = [])),
    params(("name" = String, Path, description = "task name")),
    responses((status = 200, body = TaskDetail), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn task_detail(
    State(state): State<AppState>,
    Input(Path(name)): Input<Path<String>>,
) -> Result<Json<TaskDetail>, ApiError> {
    let stats = state.store.stats().await?;
    let recent: Vec<RunSummary> = state
        .store
        .runs(&name, 10)
        .await?
        .iter()
        .map(run_summary)
        .collect();
    let view = match find(&state, &name) {
        Ok(v) => v,
        Err(ApiError::Conflict(_)) => {
            let error = load_errors(&state).get(&name).cloned().unwrap_or_default();
            return Ok(Json(TaskDetail {
                summary: failed_summary(&name, &error, stats.get(&name)),
                setup: None,
                recent_runs: recent,
            }));
        }
        Err(e) => return Err(e),
    };
    let def = &view.def;
    let m = &def.manifest;
    let setup = TaskSetup {
        version: def.info.version.clone(),
        component_hash: def.component.hash().to_owned(),
        component: m.component.clone(),
        capabilities: def.info.capabilities.clone(),
        run_on_startup: def.run_on_startup(),
        startup_delay_ms: m.startup_delay.as_millis() as u64,
        jitter_ms: m.jitter.as_millis() as u64,
        overlap: m.overlap,
        misfire: m.misfire,
        timeout_ms: m.timeout.as_millis() as u64,
        retries: RetriesView {
            max: m.retries.max,
            backoff_ms: m.retries.backoff.as_millis() as u64,
        },
        history: HistoryView {
            keep_days: m.history.keep_days,
            keep_last: m.history.keep_last,
        },
        limits: LimitsView {
            fuel: m.limits.fuel,
            memory_bytes: m.limits.memory_bytes,
            descriptors: m.limits.resources.descriptors,
            write_bytes: m.limits.resources.write_bytes,
            dir_streams: m.limits.resources.dir_streams,
            handles: m.limits.resources.handles,
        },
        grants: Grants {
            dirs: m
                .dirs
                .iter()
                .map(|d| DirGrantView {
                    host: d.host.display().to_string(),
                    guest: d.guest.clone(),
                    mode: d.mode,
                })
                .collect(),
            database: m.database.as_ref().map(|db| DatabaseGrantView {
                connection: db.connection.clone(),
                tables: db.tables.clone(),
            }),
        },
    };
    Ok(Json(TaskDetail {
        summary: TaskSummary {
            load_error: load_errors(&state).get(&name).cloned(),
            ..summary(&view, stats.get(&name))
        },
        setup: Some(setup),
        recent_runs: recent,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct RunParams {
    /// Run with every directory read-only and report what would change.
    dry_run: Option<bool>,
}

/// Runs the task now (202). The overlap policy applies: 409 when it says skip.
#[utoipa::path(post, path = "/api/housekeeper/tasks/{name}/run", security(("bearer" = [])),
    params(("name" = String, Path, description = "task name"), RunParams),
    responses((status = 202, body = Triggered), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn run_task(
    State(state): State<AppState>,
    Input(Path(name)): Input<Path<String>>,
    Input(Query(params)): Input<Query<RunParams>>,
) -> Result<(StatusCode, Json<Triggered>), ApiError> {
    find(&state, &name)?;
    let dry_run = params.dry_run.unwrap_or(false);
    let (outcome, run_id) = state
        .scheduler
        .trigger_and_wait(&name, dry_run, Duration::from_secs(1))
        .await
        .map_err(|e| ApiError::NotFound(e.to_string()))?;
    let what = if dry_run { "dry run of task" } else { "task" };
    match outcome {
        FireOutcome::Started => Ok((
            StatusCode::ACCEPTED,
            Json(Triggered {
                message: format!("{what} '{name}' triggered successfully"),
                status: if run_id.is_some() {
                    "running"
                } else {
                    "waiting"
                }
                .into(),
                run_id,
            }),
        )),
        FireOutcome::Queued => Ok((
            StatusCode::ACCEPTED,
            Json(Triggered {
                message: format!("{what} '{name}' queued behind the running one"),
                status: "queued".into(),
                run_id: None,
            }),
        )),
        FireOutcome::Skipped(reason) => Err(ApiError::Conflict(reason)),
    }
}

/// Enables or disables the task's schedule, persistently and at once.
#[utoipa::path(patch, path = "/api/housekeeper/tasks/{name}/toggle", security(("bearer" = [])),
    params(("name" = String, Path, description = "task name")), request_body = Toggle,
    responses((status = 200, body = Toggled), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn toggle_task(
    State(state): State<AppState>,
    Input(Path(name)): Input<Path<String>>,
    // An unknown task is a 404 whatever the body.
    body: Result<Input<Json<Toggle>>, ApiError>,
) -> Result<Json<Toggled>, ApiError> {
    find(&state, &name)?;
    let Input(Json(body)) = body?;
    state.scheduler.set_enabled(&name, body.enabled).await?;
    let view = find(&state, &name)?;
    Ok(Json(Toggled {
        message: format!(
            "task '{name}' {}",
            if body.enabled { "enabled" } else { "disabled" }
        ),
        name,
        enabled: view.enabled,
        next_run_at: if view.enabled { view.next_fire } else { None },
    }))
}

/// Whether a task is registered, running and scheduled, in the shape of
/// the reference service; an unknown name answers `registered: false`.
#[utoipa::path(get, path = "/api/housekeeper/tasks/{name}/status", security(("bearer" = [])),
    params(("name" = String, Path, description = "task name")),
    responses((status = 200, body = TaskStatus), (status = 401, body = ErrorBody)))]
pub(super) async fn task_status(
    State(state): State<AppState>,
    Input(Path(name)): Input<Path<String>>,
) -> Json<TaskStatus> {
    let view = state.scheduler.tasks().into_iter().find(|t| t.name == name);
    Json(TaskStatus {
        registered: view.is_some(),
        running: view.as_ref().is_some_and(|t| t.running > 0),
        scheduled: state.scheduler.scheduling()
            && view.is_some_and(|t| t.enabled && t.next_fire.is_some()),
    })
}

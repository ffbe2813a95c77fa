//! The HTTP interface: health and readiness, the REST API under
//! `/api/housekeeper` (paths and shapes of the reference service), and
//! Prometheus metrics.

mod error;
pub mod types;

pub use error::{ApiError, Input};

use crate::metrics::Metrics;
use crate::model::RunStatus;
use crate::scheduler::{FireOutcome, Scheduler, TaskView};
use crate::store::{RunRecord, Store, TaskStats};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use types::*;
use utoipa::OpenApi;

fn load_errors(state: &AppState) -> BTreeMap<String, String> {
    state
        .load_errors
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Shared by the handlers.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub scheduler: Scheduler,
    pub metrics: Metrics,
    pub started: Instant,
    /// Task files that failed to load, by task name.
    pub load_errors: crate::loader::LoadErrors,
    /// Rescans the tasks directory (`POST /api/housekeeper/reload`).
    pub reloader: Option<Arc<crate::reload::Reloader>>,
    /// When set, `/api/*` needs `Authorization: Bearer <token>`.
    pub api_token: Option<Arc<str>>,
    pub stats_cache: Arc<StatsCache>,
}

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

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/tasks", get(list_tasks))
        .route("/tasks/{name}", get(task_detail))
        .route("/tasks/{name}/run", post(run_task))
        .route("/tasks/{name}/toggle", patch(toggle_task))
        .route("/tasks/{name}/status", get(task_status))
        .route("/tasks/{name}/runs", get(task_runs))
        .route("/tasks/{name}/runs/{run_id}", get(task_run))
        .route("/runs/{run_id}/cancel", post(cancel_run))
        .route("/status", get(status))
        .route("/reload", post(reload));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route(
            "/api/openapi.json",
            get(openapi).route_layer(middleware::from_fn_with_state(state.clone(), auth)),
        )
        .nest(
            "/api/housekeeper",
            api.route_layer(middleware::from_fn_with_state(state.clone(), auth)),
        )
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Unknown paths: 404, but under `/api` only for a caller with the token.
async fn fallback(State(state): State<AppState>, request: Request) -> ApiError {
    if request.uri().path().starts_with("/api") && !authorized(&state, &request) {
        return ApiError::Unauthorized;
    }
    ApiError::NotFound(format!("no route for {}", request.uri().path()))
}

async fn method_not_allowed(request: Request) -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({ "error": format!("{} is not allowed on {}", request.method(), request.uri().path()) })),
    )
        .into_response()
}

fn authorized(state: &AppState, request: &Request) -> bool {
    let Some(expected) = &state.api_token else {
        return true;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    subtle::ConstantTimeEq::ct_eq(given.as_bytes(), expected.as_bytes()).into()
}

/// Constant-time bearer token check for `/api/*`.
async fn auth(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !authorized(&state, &request) {
        return ApiError::Unauthorized.into_response();
    }
    next.run(request).await
}

/// Liveness.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Health)))]
async fn health(State(state): State<AppState>) -> Json<Health> {
    let stuck = state.scheduler.stuck_runs();
    if !stuck.is_empty() {
        tracing::warn!(runs = ?stuck, "guest workers are stuck in runs past their deadline");
    }
    Json(Health {
        status: if stuck.is_empty() {
            "healthy"
        } else {
            "degraded"
        }
        .into(),
        service: "housekeeper".into(),
        uptime: state.started.elapsed().as_secs(),
        timestamp: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        stuck_runs: stuck
            .into_iter()
            .map(|r| StuckRunView {
                task: r.task,
                run_id: r.run_id,
                overdue_seconds: r.overdue.as_secs(),
            })
            .collect(),
    })
}

/// Readiness: 503 while the tasks directory is first being loaded, and when
/// the store is unreachable.
#[utoipa::path(get, path = "/ready", responses((status = 200, body = Ready), (status = 503, body = Ready)))]
async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Ready>) {
    if state.reloader.as_ref().is_some_and(|r| !r.loaded()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Ready {
                status: "not ready".into(),
                database: Some(state.store.backend_name().into()),
                error: Some("loading the tasks directory".into()),
            }),
        );
    }
    match state.store.ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(Ready {
                status: "ready".into(),
                database: Some(state.store.backend_name().into()),
                error: None,
            }),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "store unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Ready {
                    status: "not ready".into(),
                    database: None,
                    error: Some("the store is unreachable".into()),
                }),
            )
        }
    }
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", responses((status = 200, content_type = "application/openmetrics-text", body = String)))]
async fn metrics(State(state): State<AppState>) -> Response {
    let tasks = state.scheduler.tasks();
    state
        .metrics
        .set_running(tasks.iter().map(|t| (t.name.as_str(), t.running)));
    state.metrics.set_load_errors(load_errors(&state).len());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", responses((status = 200, description = "OpenAPI 3 document"), (status = 401, body = ErrorBody)))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[derive(OpenApi)]
#[openapi(
    info(title = "housekeeper", description = "Sandboxed maintenance tasks: schedule, trigger, toggle, history."),
    paths(health, ready, metrics, openapi, list_tasks, task_detail, task_status, run_task, toggle_task, task_runs, task_run, cancel_run, status, reload),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
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
async fn list_tasks(State(state): State<AppState>) -> Result<Response, ApiError> {
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

fn find(state: &AppState, name: &str) -> Result<TaskView, ApiError> {
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
async fn task_detail(
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
struct RunParams {
    /// Run with every directory read-only and report what would change.
    dry_run: Option<bool>,
}

/// Runs the task now (202). The overlap policy applies: 409 when it says skip.
#[utoipa::path(post, path = "/api/housekeeper/tasks/{name}/run", security(("bearer" = [])),
    params(("name" = String, Path, description = "task name"), RunParams),
    responses((status = 202, body = Triggered), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn run_task(
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
async fn toggle_task(
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

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PageParams {
    /// 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Runs to skip, newest first (default 0).
    #[param(minimum = 0)]
    offset: Option<i64>,
}

/// Whether a task is registered, running and scheduled, in the shape of
/// the reference service; an unknown name answers `registered: false`.
#[utoipa::path(get, path = "/api/housekeeper/tasks/{name}/status", security(("bearer" = [])),
    params(("name" = String, Path, description = "task name")),
    responses((status = 200, body = TaskStatus), (status = 401, body = ErrorBody)))]
async fn task_status(
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

/// A page of the task's runs, newest first.
#[utoipa::path(get, path = "/api/housekeeper/tasks/{name}/runs", security(("bearer" = [])),
    params(("name" = String, Path, description = "task name"), PageParams),
    responses((status = 200, body = RunPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn task_runs(
    State(state): State<AppState>,
    Input(Path(name)): Input<Path<String>>,
    Input(Query(page)): Input<Query<PageParams>>,
) -> Result<Json<RunPage>, ApiError> {
    let limit = page.limit.unwrap_or(50);
    let offset = page.offset.unwrap_or(0);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 1000".into(),
        ));
    }
    if offset < 0 {
        return Err(ApiError::BadRequest("offset must not be negative".into()));
    }
    if find(&state, &name).is_err() && !load_errors(&state).contains_key(&name) {
        return Err(ApiError::NotFound(format!("no task named {name:?}")));
    }
    let (runs, total) = state.store.runs_page(&name, limit, offset).await?;
    Ok(Json(RunPage {
        runs: runs.iter().map(run_summary).collect(),
        total,
        limit,
        offset,
    }))
}

fn parse_run_id(text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "invalid run id {text:?}: expected a positive integer"
            ))
        })
}

/// One run with its full output, error, metrics and component hash.
#[utoipa::path(get, path = "/api/housekeeper/tasks/{name}/runs/{run_id}", security(("bearer" = [])),
    params(("name" = String, Path, description = "task name"), ("run_id" = i64, Path, description = "run id (a positive integer)")),
    responses((status = 200, body = RunDetail), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn task_run(
    State(state): State<AppState>,
    Input(Path((name, run_id))): Input<Path<(String, String)>>,
) -> Result<Json<RunDetail>, ApiError> {
    let id = parse_run_id(&run_id)?;
    let run = state
        .store
        .run(id)
        .await?
        .filter(|r| r.task_name == name)
        .ok_or_else(|| ApiError::NotFound(format!("no run {id} of task {name:?}")))?;
    Ok(Json(run_detail(&run)))
}

/// Stops a running run; it is recorded `cancelled`.
#[utoipa::path(post, path = "/api/housekeeper/runs/{run_id}/cancel", security(("bearer" = [])),
    params(("run_id" = i64, Path, description = "run id (a positive integer)")),
    responses((status = 202, body = Cancelled), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn cancel_run(
    State(state): State<AppState>,
    Input(Path(run_id)): Input<Path<String>>,
) -> Result<(StatusCode, Json<Cancelled>), ApiError> {
    let id = parse_run_id(&run_id)?;
    let run = state
        .store
        .run(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no run {id}")))?;
    if run.status != RunStatus::Running {
        return Err(ApiError::Conflict(format!(
            "run {id} is not running (status {})",
            run.status
        )));
    }
    let message = if state.scheduler.cancel(id) {
        format!("run {id} is being cancelled")
    } else {
        // Another replica runs it: it sees the request at its next
        // heartbeat.
        match state
            .store
            .request_cancel(id, "cancelled on request")
            .await?
        {
            Some(replica) => format!(
                "run {id} is being cancelled by replica {replica}, which stops it within a heartbeat"
            ),
            None => {
                return Err(ApiError::Conflict(format!(
                    "run {id} is not running on any live replica (last on {})",
                    run.replica
                )));
            }
        }
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(Cancelled {
            message,
            run_id: id,
        }),
    ))
}

/// Overall health and counts.
#[utoipa::path(get, path = "/api/housekeeper/status", security(("bearer" = [])),
    responses((status = 200, body = Status), (status = 401, body = ErrorBody)))]
async fn status(State(state): State<AppState>) -> Result<Json<Status>, ApiError> {
    let stats = state.store.stats().await?;
    let views = state.scheduler.tasks();
    let failing: Vec<LastError> = views
        .iter()
        .filter_map(|t| {
            let s = stats.get(&t.name)?;
            let last = s.last_status?;
            (last != RunStatus::Success).then(|| LastError {
                task: t.name.clone(),
                status: last,
                at: s.last_run_at,
            })
        })
        .collect();
    let errors = load_errors(&state);
    let healthy =
        failing.is_empty() && errors.is_empty() && state.scheduler.stuck_runs().is_empty();
    let failed_only = errors
        .keys()
        .filter(|n| !views.iter().any(|t| &t.name == *n))
        .count();
    Ok(Json(Status {
        status: if healthy { "healthy" } else { "degraded" }.into(),
        uptime: state.started.elapsed().as_secs(),
        database: state.store.backend_name().into(),
        tasks: (views.len() + failed_only) as u64,
        enabled_tasks: views.iter().filter(|t| t.enabled).count() as u64,
        running_tasks: views.iter().filter(|t| t.running > 0).count() as u64,
        failing_tasks: failing.len() as u64,
        last_errors: failing,
        load_errors: errors
            .iter()
            .map(|(task, error)| LoadErrorView {
                task: task.clone(),
                error: error.clone(),
            })
            .collect(),
        replicas: state
            .store
            .replicas(state.store.lease_length())
            .await?
            .into_iter()
            .map(|r| ReplicaView {
                replica: r.replica,
                started_at: r.started_at,
                heartbeat_at: r.heartbeat_at,
                clock_offset_ms: r.clock_offset_ms,
                version: r.version,
            })
            .collect(),
    }))
}

fn run_summary(r: &RunRecord) -> RunSummary {
    RunSummary {
        id: r.id,
        task_name: r.task_name.clone(),
        status: r.status,
        started_at: r.started_at,
        completed_at: r.completed_at,
        duration_ms: r.duration_ms,
        triggered_by: r.triggered_by,
        scheduled_for: r.scheduled_for,
        dry_run: r.dry_run,
        error: r.error.clone(),
    }
}

fn run_detail(r: &RunRecord) -> RunDetail {
    RunDetail {
        summary: run_summary(r),
        output: r.output.clone(),
        metrics: r
            .metrics
            .as_ref()
            .and_then(|m| serde_json::from_value(m.clone()).ok()),
        fuel_used: r.fuel_used,
        component_hash: r.component_hash.clone(),
        replica: r.replica.clone(),
        heartbeat_at: r.heartbeat_at,
    }
}

/// Rescans the tasks directory now (as a file change or SIGHUP would).
#[utoipa::path(post, path = "/api/housekeeper/reload", security(("bearer" = [])),
    responses((status = 200, body = crate::reload::ReloadSummary), (status = 409, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn reload(
    State(state): State<AppState>,
) -> Result<Json<crate::reload::ReloadSummary>, ApiError> {
    let Some(reloader) = &state.reloader else {
        return Err(ApiError::Conflict(
            "this service has no tasks directory to reload".into(),
        ));
    };
    // Every other replica rescans its own tasks directory when it sees the
    // request, within a heartbeat.
    if let Err(e) = state.store.request_reload().await {
        tracing::warn!(error = %e, "cannot ask the other replicas to reload");
    }
    Ok(Json(
        reloader.reload(crate::reload::RescanCause::Api).await?,
    ))
}

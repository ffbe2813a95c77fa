//! The HTTP interface: health and readiness, the REST API under
//! `/api/housekeeper` (paths and shapes of the reference service), and
//! Prometheus metrics.

mod error;

pub use error::ApiError;

use crate::manifest::DirMode;
use crate::metrics::Metrics;
use crate::scheduler::{FireOutcome, Scheduler, TaskView};
use crate::store::{RunRecord, Store, TaskStats};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    pub load_errors: Arc<BTreeMap<String, String>>,
    /// When set, `/api/*` needs `Authorization: Bearer <token>`.
    pub api_token: Option<Arc<str>>,
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/tasks", get(list_tasks))
        .route("/tasks/{name}", get(task_detail))
        .route("/tasks/{name}/run", post(run_task))
        .route("/tasks/{name}/toggle", patch(toggle_task))
        .route("/tasks/{name}/runs", get(task_runs))
        .route("/tasks/{name}/runs/{run_id}", get(task_run))
        .route("/runs/{run_id}/cancel", post(cancel_run))
        .route("/status", get(status));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
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

async fn health(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "healthy",
        "service": "housekeeper",
        "uptime": state.started.elapsed().as_secs(),
        "timestamp": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }))
}

async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    match state.store.ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "database": state.store.backend_name() })),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "store unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "not ready", "error": "the store is unreachable" })),
            )
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let tasks = state.scheduler.tasks();
    state
        .metrics
        .set_running(tasks.iter().map(|t| (t.name.as_str(), t.running)));
    state.metrics.set_load_errors(state.load_errors.len());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

fn stats_json(stats: Option<&TaskStats>) -> Value {
    let s = stats.cloned().unwrap_or_default();
    json!({
        "total_runs": s.total_runs,
        "success_count": s.success_count,
        "error_count": s.error_count,
        "skipped_count": s.skipped_count,
        "avg_duration_ms": s.avg_duration_ms.map(|d| d.round() as i64),
        "last_run_at": s.last_run_at,
        "last_status": s.last_status,
    })
}

fn task_json(t: &TaskView, stats: Option<&TaskStats>) -> Value {
    json!({
        "name": t.name,
        "description": t.def.info.description,
        "schedule": t.schedule,
        "timezone": t.timezone.name(),
        "enabled": t.enabled,
        "isRunning": t.running > 0,
        "runningCount": t.running,
        "nextRunAt": if t.enabled { t.next_fire } else { None },
        "loadError": Value::Null,
        "stats": stats_json(stats),
    })
}

fn failed_task_json(name: &str, error: &str, stats: Option<&TaskStats>) -> Value {
    json!({
        "name": name,
        "description": Value::Null,
        "schedule": Value::Null,
        "timezone": Value::Null,
        "enabled": false,
        "isRunning": false,
        "runningCount": 0,
        "nextRunAt": Value::Null,
        "loadError": error,
        "stats": stats_json(stats),
    })
}

async fn list_tasks(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let stats = state.store.stats().await?;
    let views = state.scheduler.tasks();
    let mut tasks: Vec<Value> = views
        .iter()
        .map(|t| task_json(t, stats.get(&t.name)))
        .collect();
    for (name, error) in state.load_errors.iter() {
        if !views.iter().any(|t| &t.name == name) {
            tasks.push(failed_task_json(name, error, stats.get(name)));
        }
    }
    tasks.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let running = views.iter().filter(|t| t.running > 0).count();
    Ok(Json(json!({
        "tasks": tasks,
        "totalTasks": tasks.len(),
        "runningTasks": running,
    })))
}

fn find(state: &AppState, name: &str) -> Result<TaskView, ApiError> {
    if let Some(t) = state.scheduler.tasks().into_iter().find(|t| t.name == name) {
        return Ok(t);
    }
    match state.load_errors.get(name) {
        Some(e) => Err(ApiError::Conflict(format!(
            "task {name:?} failed to load: {e}"
        ))),
        None => Err(ApiError::NotFound(format!("no task named {name:?}"))),
    }
}

async fn task_detail(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let stats = state.store.stats().await?;
    let view = match find(&state, &name) {
        Ok(v) => v,
        Err(ApiError::Conflict(_)) => {
            let error = &state.load_errors[&name];
            return Ok(Json(failed_task_json(&name, error, stats.get(&name))));
        }
        Err(e) => return Err(e),
    };
    let recent = state.store.runs(&name, 10).await?;
    let def = &view.def;
    let m = &def.manifest;
    let mut body = task_json(&view, stats.get(&name));
    let extra = json!({
        "version": def.info.version,
        "componentHash": def.component.hash(),
        "component": m.component,
        "capabilities": def.info.capabilities,
        "runOnStartup": def.run_on_startup(),
        "startupDelayMs": m.startup_delay.as_millis() as u64,
        "jitterMs": m.jitter.as_millis() as u64,
        "overlap": format!("{:?}", m.overlap).to_lowercase(),
        "misfire": match m.misfire { crate::manifest::Misfire::Skip => "skip", crate::manifest::Misfire::RunOnce => "run-once" },
        "timeoutMs": m.timeout.as_millis() as u64,
        "retries": { "max": m.retries.max, "backoffMs": m.retries.backoff.as_millis() as u64 },
        "history": { "keepDays": m.history.keep_days, "keepLast": m.history.keep_last },
        "limits": { "fuel": m.limits.fuel, "memoryBytes": m.limits.memory_bytes },
        "grants": {
            "dirs": m.dirs.iter().map(|d| json!({
                "host": d.host.display().to_string(),
                "guest": d.guest,
                "mode": match d.mode { DirMode::Ro => "ro", DirMode::Rw => "rw" },
            })).collect::<Vec<_>>(),
            "database": m.database.as_ref().map(|db| json!({
                "connection": db.connection,
                "tables": db.tables.iter().map(|(t, verbs)| (t.clone(), json!(verbs.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>()))).collect::<serde_json::Map<_, _>>(),
            })),
        },
        "recentRuns": recent.iter().map(run_summary).collect::<Vec<_>>(),
    });
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    Ok(Json(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunParams {
    dry_run: Option<bool>,
}

async fn run_task(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<RunParams>, QueryRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Query(params) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
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
            Json(json!({
                "message": format!("{what} '{name}' triggered successfully"),
                "status": if run_id.is_some() { "running" } else { "waiting" },
                "runId": run_id,
            })),
        )),
        FireOutcome::Queued => Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "message": format!("{what} '{name}' queued behind the running one"),
                "status": "queued",
                "runId": Value::Null,
            })),
        )),
        FireOutcome::Skipped(reason) => Err(ApiError::Conflict(reason)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToggleBody {
    enabled: bool,
}

async fn toggle_task(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<ToggleBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    find(&state, &name)?;
    let Json(body) = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(BODY_LIMIT)
        } else {
            ApiError::BadRequest(e.body_text())
        }
    })?;
    state.scheduler.set_enabled(&name, body.enabled).await?;
    let view = find(&state, &name)?;
    Ok(Json(json!({
        "message": format!("task '{name}' {}", if body.enabled { "enabled" } else { "disabled" }),
        "name": name,
        "enabled": view.enabled,
        "nextRunAt": if view.enabled { view.next_fire } else { None },
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageParams {
    limit: Option<i64>,
    offset: Option<i64>,
}

async fn task_runs(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<PageParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(page) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
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
    if find(&state, &name).is_err() && !state.load_errors.contains_key(&name) {
        return Err(ApiError::NotFound(format!("no task named {name:?}")));
    }
    let (runs, total) = state.store.runs_page(&name, limit, offset).await?;
    Ok(Json(json!({
        "runs": runs.iter().map(run_summary).collect::<Vec<_>>(),
        "total": total,
        "limit": limit,
        "offset": offset,
    })))
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

async fn task_run(
    State(state): State<AppState>,
    Path((name, run_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_run_id(&run_id)?;
    let run = state
        .store
        .run(id)
        .await?
        .filter(|r| r.task_name == name)
        .ok_or_else(|| ApiError::NotFound(format!("no run {id} of task {name:?}")))?;
    Ok(Json(run_full(&run)))
}

async fn cancel_run(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = parse_run_id(&run_id)?;
    let run = state
        .store
        .run(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no run {id}")))?;
    if run.status != "running" {
        return Err(ApiError::Conflict(format!(
            "run {id} is not running (status {})",
            run.status
        )));
    }
    if !state.scheduler.cancel(id) {
        return Err(ApiError::Conflict(format!(
            "run {id} is not running in this process (replica {})",
            run.replica
        )));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "message": format!("run {id} is being cancelled"), "runId": id })),
    ))
}

async fn status(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let stats = state.store.stats().await?;
    let views = state.scheduler.tasks();
    let failing: Vec<Value> = views
        .iter()
        .filter_map(|t| {
            let s = stats.get(&t.name)?;
            let last = s.last_status.as_deref()?;
            (last != "success")
                .then(|| json!({ "task": t.name, "status": last, "at": s.last_run_at }))
        })
        .collect();
    let healthy = failing.is_empty() && state.load_errors.is_empty();
    Ok(Json(json!({
        "status": if healthy { "healthy" } else { "degraded" },
        "uptime": state.started.elapsed().as_secs(),
        "database": state.store.backend_name(),
        "tasks": views.len() + state.load_errors.keys().filter(|n| !views.iter().any(|t| &t.name == *n)).count(),
        "enabledTasks": views.iter().filter(|t| t.enabled).count(),
        "runningTasks": views.iter().filter(|t| t.running > 0).count(),
        "failingTasks": failing.len(),
        "lastErrors": failing,
        "loadErrors": state.load_errors.iter().map(|(task, error)| json!({ "task": task, "error": error })).collect::<Vec<_>>(),
    })))
}

fn run_summary(r: &RunRecord) -> Value {
    json!({
        "id": r.id,
        "task_name": r.task_name,
        "status": r.status,
        "started_at": r.started_at,
        "completed_at": r.completed_at,
        "duration_ms": r.duration_ms,
        "triggered_by": r.triggered_by,
        "scheduled_for": r.scheduled_for,
        "dry_run": r.dry_run,
        "error": r.error,
    })
}

fn run_full(r: &RunRecord) -> Value {
    let mut v = run_summary(r);
    if let Value::Object(map) = &mut v {
        map.insert("output".into(), json!(r.output));
        map.insert("metrics".into(), json!(r.metrics));
        map.insert("fuel_used".into(), json!(r.fuel_used));
        map.insert("component_hash".into(), json!(r.component_hash));
        map.insert("replica".into(), json!(r.replica));
        map.insert("heartbeat_at".into(), json!(r.heartbeat_at));
    }
    v
}

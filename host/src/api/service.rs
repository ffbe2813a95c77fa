//! The endpoints about the service as a whole: liveness, readiness,
//! Prometheus metrics, the overall status and a rescan of the tasks
//! directory on request.

use super::types::*;
use super::{ApiError, AppState, load_errors};
use crate::model::RunStatus;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;

/// Liveness.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Health)))]
pub(super) async fn health(State(state): State<AppState>) -> Json<Health> {
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
pub(super) async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Ready>) {
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
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
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

/// Overall health and counts.
#[utoipa::path(get, path = "/api/housekeeper/status", security(("bearer" = [])),
    responses((status = 200, body = Status), (status = 401, body = ErrorBody)))]
pub(super) async fn status(State(state): State<AppState>) -> Result<Json<Status>, ApiError> {
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

/// Rescans the tasks directory now (as a file change or SIGHUP would).
#[utoipa::path(post, path = "/api/housekeeper/reload", security(("bearer" = [])),
    responses((status = 200, body = crate::reload::ReloadSummary), (status = 409, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn reload(
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

//! The run endpoints: a task's runs page by page, one run, and cancelling
//! a run; and how a stored run is shown.

use super::tasks::find;
use super::types::*;
use super::{ApiError, AppState, Input, load_errors};
use crate::model::RunStatus;
use crate::store::RunRecord;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct PageParams {
    /// 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Runs to skip, newest first (default 0).
    #[param(minimum = 0)]
    offset: Option<i64>,
}

/// A page of the task's runs, newest first.
#[utoipa::path(get, path = "/api/housekeeper/tasks/{name}/runs", security(("bearer" = [])),
    params(("name" = String, Path, description = "task name"), PageParams),
    responses((status = 200, body = RunPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn task_runs(
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
pub(super) async fn task_run(
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

/// Stops a running run (it is recorded `cancelled`), on whichever replica
/// runs it; for a failed run whose retry waits out its backoff, cancels
/// the retry (recorded `skipped`). 409 when there is neither.
#[utoipa::path(post, path = "/api/housekeeper/runs/{run_id}/cancel", security(("bearer" = [])),
    params(("run_id" = i64, Path, description = "run id (a positive integer)")),
    responses((status = 202, body = Cancelled), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn cancel_run(
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
        // A failed run whose retry waits out its backoff: the retry is what
        // is cancelled (recorded skipped, with why), wherever it waits.
        let why = "cancelled on request, during the backoff before this retry";
        if state.store.drop_retry(id, Some(why)).await? {
            state.scheduler.cancel(id);
            return Ok((
                StatusCode::ACCEPTED,
                Json(Cancelled {
                    message: format!("the retry planned after run {id} is cancelled"),
                    run_id: id,
                }),
            ));
        }
        return Err(ApiError::Conflict(format!(
            "run {id} is not running (status {}) and no retry of it is waiting",
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

pub(super) fn run_summary(r: &RunRecord) -> RunSummary {
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

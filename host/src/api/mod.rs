//! The HTTP interface: health and readiness, the REST API under
//! `/api/housekeeper` (paths and shapes of the reference service), and
//! Prometheus metrics.
//!
//! Here: the shared state, the router, bearer auth and the OpenAPI
//! document. The handlers are in `tasks` (the task endpoints), `runs` (a
//! task's runs and cancelling one) and `service` (health, readiness,
//! metrics, status, reload).

mod error;
mod runs;
mod service;
mod tasks;
pub mod types;

pub use error::{ApiError, Input};
pub use tasks::StatsCache;

use crate::metrics::Metrics;
use crate::scheduler::Scheduler;
use crate::store::Store;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use types::*;
use utoipa::OpenApi;
// Each handler with its `#[utoipa::path]` item: named bare in `ApiDoc`,
// as a path (`tasks::list_tasks`) would tag its operations by module.
use runs::{__path_cancel_run, __path_task_run, __path_task_runs, cancel_run, task_run, task_runs};
use service::{
    __path_health, __path_metrics, __path_ready, __path_reload, __path_status, health, metrics,
    ready, reload, status,
};
use tasks::{
    __path_list_tasks, __path_run_task, __path_task_detail, __path_task_status, __path_toggle_task,
    list_tasks, run_task, task_detail, task_status, toggle_task,
};

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

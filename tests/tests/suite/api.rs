//! The REST API through `Router::oneshot`, with the real runtime, real
//! components and a SQLite store.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use housekeeper::api::{AppState, BODY_LIMIT, router};
use housekeeper::manifest::{
    DatabaseGrant, DirGrant, DirMode, Manifest, Misfire, Overlap, SqlVerb,
};
use housekeeper::metrics::Metrics;
use housekeeper::model::ConfigValue;
use housekeeper::scheduler::clock::SystemClock;
use housekeeper::scheduler::{Scheduler, SchedulerConfig, TaskDef};
use housekeeper::store::{Store, StoreOptions};
use housekeeper_tests::{component, fixture_path, runtime};
use http_body_util::BodyExt;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

struct Api {
    _dir: tempfile::TempDir,
    router: Router,
    token: Option<&'static str>,
}

async fn def(name: &str, fixture: &str, edit: impl FnOnce(&mut Manifest)) -> TaskDef {
    let mut manifest = Manifest::implicit(name, &format!("{fixture}.wasm"));
    edit(&mut manifest);
    let component = component(&fixture_path(fixture));
    let info = runtime().describe(&component).await.unwrap();
    TaskDef {
        manifest,
        component,
        info,
    }
}

async fn api(token: Option<&'static str>) -> Api {
    api_with(token, Vec::new()).await
}

/// The usual tasks (`noop`, `slow`, the failing `broken`) plus `extra`.
async fn api_with(token: Option<&'static str>, extra: Vec<TaskDef>) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("hk.db").display());
    let store = Store::open(&url, "api-test", &StoreOptions::default())
        .await
        .unwrap();
    let metrics = Metrics::default();
    let scheduler = Scheduler::new(
        Arc::new(runtime().clone()),
        store.clone(),
        Arc::new(SystemClock),
        SchedulerConfig {
            metrics: Some(metrics.clone()),
            ..SchedulerConfig::default()
        },
    );
    let slow = def("slow", "hostile", |m| {
        m.overlap = Overlap::Skip;
        m.limits.fuel = u64::MAX / 4;
        m.timeout = Duration::from_secs(60);
        m.config
            .insert("mode".into(), ConfigValue::Text("spin".into()));
    })
    .await;
    let noop = def("noop", "noop", |m| {
        m.schedule = Some(housekeeper::schedule::Schedule::parse("0 3 * * *").unwrap())
    })
    .await;
    let mut defs = vec![noop, slow];
    defs.extend(extra);
    scheduler.register(defs).await.unwrap();
    scheduler.start().await.unwrap();
    let mut load_errors = BTreeMap::new();
    load_errors.insert(
        "broken".to_owned(),
        "invalid manifest broken.toml: unknown field `shedule`".to_owned(),
    );
    let state = AppState {
        store,
        scheduler,
        metrics,
        started: Instant::now(),
        load_errors: Arc::new(std::sync::RwLock::new(load_errors)),
        reloader: None,
        api_token: token.map(Arc::from),
        stats_cache: Default::default(),
    };
    Api {
        _dir: dir,
        router: router(state),
        token,
    }
}

impl Api {
    async fn call(&self, method: Method, path: &str, body: Option<&str>) -> (StatusCode, Value) {
        self.call_with(method, path, body, self.token).await
    }

    async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        let request = match body {
            Some(b) => request
                .header("content-type", "application/json")
                .body(Body::from(b.to_owned())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    /// Polls a run until it is no longer running.
    /// Cancels run `id` of `task` and waits until it is recorded finished.
    async fn cancel(&self, task: &str, id: i64) -> Value {
        self.call(
            Method::POST,
            &format!("/api/housekeeper/runs/{id}/cancel"),
            None,
        )
        .await;
        self.finished_run(task, id).await
    }

    async fn finished_run(&self, task: &str, id: i64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, run) = self
                .get(&format!("/api/housekeeper/tasks/{task}/runs/{id}"))
                .await;
            assert_eq!(status, StatusCode::OK, "{run}");
            if run["status"] != "running" {
                return run;
            }
            assert!(Instant::now() < deadline, "run {id} never finished");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, needle: &str) {
    assert_eq!(status, expected, "{body}");
    let error = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field in {body}"));
    assert!(error.contains(needle), "{error:?} lacks {needle:?}");
}

#[tokio::test]
async fn auth_guards_the_api_but_not_health_ready_metrics() {
    let a = api(Some("s3cret")).await;
    for path in ["/health", "/ready", "/metrics"] {
        let (status, _) = a.call_with(Method::GET, path, None, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    for path in [
        "/api/housekeeper/tasks",
        "/api/housekeeper/status",
        "/api/housekeeper/nope",
        "/api/other",
    ] {
        let (status, body) = a.call_with(Method::GET, path, None, None).await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "bearer token");
        let (status, _) = a.call_with(Method::GET, path, None, Some("s3cre")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let (status, body) = a
        .call_with(Method::POST, "/api/housekeeper/tasks/noop/run", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _) = a.get("/api/housekeeper/tasks").await;
    assert_eq!(status, StatusCode::OK);

    // Without a token everything is open.
    let open = api(None).await;
    assert_eq!(open.get("/api/housekeeper/tasks").await.0, StatusCode::OK);
}

#[tokio::test]
async fn health_and_ready_keep_the_reference_shape() {
    let a = api(None).await;
    let (status, body) = a.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["service"], "housekeeper");
    assert!(body["uptime"].is_u64());
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
    let (status, body) = a.get("/ready").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["database"], "sqlite");
}

#[tokio::test]
async fn tasks_list_includes_stats_and_load_errors() {
    let a = api(None).await;
    let (status, body) = a.get("/api/housekeeper/tasks").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["totalTasks"], 3);
    assert_eq!(body["runningTasks"], 0);
    let tasks = body["tasks"].as_array().unwrap();
    let names: Vec<_> = tasks.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["broken", "noop", "slow"]);
    let noop = &tasks[1];
    assert_eq!(noop["schedule"], "0 3 * * *");
    assert_eq!(noop["timezone"], "UTC");
    assert_eq!(noop["enabled"], true);
    assert_eq!(noop["isRunning"], false);
    assert!(noop["nextRunAt"].as_str().unwrap().ends_with("03:00:00Z"));
    assert!(noop["loadError"].is_null());
    for key in [
        "total_runs",
        "success_count",
        "error_count",
        "avg_duration_ms",
        "last_run_at",
        "last_status",
    ] {
        assert!(noop["stats"].get(key).is_some(), "stats.{key}");
    }
    assert!(tasks[0]["loadError"].as_str().unwrap().contains("shedule"));
}

#[tokio::test]
async fn task_details_show_manifest_grants_and_history() {
    let a = api(None).await;
    let (status, body) = a.get("/api/housekeeper/tasks/noop").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["setup"]["componentHash"].as_str().unwrap().len(), 64);
    assert_eq!(body["description"], "Does nothing");
    assert_eq!(body["schedule"], "0 3 * * *");
    assert_eq!(body["setup"]["overlap"], "skip");
    assert_eq!(body["setup"]["limits"]["memoryBytes"], 128 << 20);
    assert_eq!(body["setup"]["limits"]["descriptors"], 256);
    assert_eq!(body["setup"]["limits"]["writeBytes"], 1u64 << 30);
    assert_eq!(body["setup"]["limits"]["dirStreams"], 32);
    assert_eq!(body["setup"]["limits"]["handles"], 1024);
    assert!(
        body["setup"]["grants"]["dirs"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(body["setup"]["grants"]["database"].is_null());
    assert!(body["recentRuns"].as_array().unwrap().is_empty());

    let (status, body) = a.get("/api/housekeeper/tasks/broken").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["loadError"].is_string());
    assert!(body["setup"].is_null());
    let (status, body) = a.get("/api/housekeeper/tasks/missing").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "missing");
}

/// Modes and verbs are shown as a manifest writes them.
#[tokio::test]
async fn task_details_show_grants_as_written() {
    let granted = def("granted", "noop", |m| {
        m.dirs = vec![
            DirGrant {
                host: "/srv/logs".into(),
                guest: "/logs".into(),
                mode: DirMode::Rw,
            },
            DirGrant {
                host: "/srv/archive".into(),
                guest: "/archive".into(),
                mode: DirMode::Ro,
            },
        ];
        m.database = Some(DatabaseGrant {
            connection: "main".into(),
            tables: BTreeMap::from([(
                "events".to_owned(),
                vec![
                    SqlVerb::Select,
                    SqlVerb::CreatePartition,
                    SqlVerb::DropPartition,
                ],
            )]),
        });
        m.misfire = Misfire::RunOnce;
    })
    .await;
    let a = api_with(None, vec![granted]).await;
    let (status, body) = a.get("/api/housekeeper/tasks/granted").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let grants = &body["setup"]["grants"];
    assert_eq!(grants["dirs"][0]["mode"], "rw", "{grants}");
    assert_eq!(grants["dirs"][1]["mode"], "ro", "{grants}");
    assert_eq!(
        grants["database"]["tables"]["events"],
        serde_json::json!(["select", "create_partition", "drop_partition"]),
        "{grants}"
    );
    assert_eq!(body["setup"]["misfire"], "run-once");
    assert_eq!(body["setup"]["overlap"], "skip");
}

#[tokio::test]
async fn a_triggered_run_can_be_fetched_by_id_with_its_output() {
    let a = api(None).await;
    let (status, body) = a
        .call(Method::POST, "/api/housekeeper/tasks/noop/run", None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "running");
    assert!(body["message"].as_str().unwrap().contains("noop"));
    let id = body["runId"].as_i64().unwrap();
    let run = a.finished_run("noop", id).await;
    assert_eq!(run["status"], "success");
    assert_eq!(run["triggered_by"], "manual");
    assert_eq!(run["dry_run"], false);
    assert_eq!(run["output"], "nothing to do");
    assert_eq!(run["component_hash"].as_str().unwrap().len(), 64);

    let (status, body) = a
        .call(
            Method::POST,
            "/api/housekeeper/tasks/noop/run?dry_run=true",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let run = a
        .finished_run("noop", body["runId"].as_i64().unwrap())
        .await;
    assert_eq!(run["dry_run"], true);

    // Read the listing once so its stats are cached, then run again: the
    // listing must show the new run.
    let (_, list) = a.get("/api/housekeeper/tasks").await;
    assert_eq!(list["tasks"][1]["stats"]["total_runs"], 2);
    let (status, body) = a
        .call(Method::POST, "/api/housekeeper/tasks/noop/run", None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    a.finished_run("noop", body["runId"].as_i64().unwrap())
        .await;
    // The row is final before the scheduler's bookkeeping; allow it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, list) = a.get("/api/housekeeper/tasks").await;
        if list["tasks"][1]["stats"]["total_runs"] == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{list}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let (_, detail) = a.get("/api/housekeeper/tasks/noop").await;
    assert_eq!(detail["recentRuns"].as_array().unwrap().len(), 3);
    assert_eq!(detail["stats"]["total_runs"], 3);

    let (_, metrics) = a.get("/metrics").await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains(r#"housekeeper_runs_total{task="noop",status="success"} 3"#)
    );
}

#[tokio::test]
async fn trigger_errors() {
    let a = api(None).await;
    let (status, body) = a
        .call(
            Method::POST,
            "/api/housekeeper/tasks/noop/run?dry_run=maybe",
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "dry_run");
    let (status, body) = a
        .call(
            Method::POST,
            "/api/housekeeper/tasks/noop/run?force=1",
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "force");
    let (status, body) = a
        .call(Method::POST, "/api/housekeeper/tasks/missing/run", None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "missing");
    let (status, body) = a
        .call(Method::POST, "/api/housekeeper/tasks/broken/run", None)
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "failed to load");
}

#[tokio::test]
async fn overlap_and_cancel() {
    let a = api(None).await;
    let (status, body) = a
        .call(Method::POST, "/api/housekeeper/tasks/slow/run", None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["runId"].as_i64().unwrap();
    let (status, body) = a
        .call(Method::POST, "/api/housekeeper/tasks/slow/run", None)
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "still running");
    let (_, list) = a.get("/api/housekeeper/tasks").await;
    assert_eq!(list["runningTasks"], 1);

    let (status, body) = a
        .call(
            Method::POST,
            &format!("/api/housekeeper/runs/{id}/cancel"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let run = a.finished_run("slow", id).await;
    assert_eq!(run["status"], "cancelled");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("cancelled on request")
    );

    let (status, body) = a
        .call(
            Method::POST,
            &format!("/api/housekeeper/runs/{id}/cancel"),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "not running");
    let (status, body) = a
        .call(Method::POST, "/api/housekeeper/runs/999999/cancel", None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "999999");
    let (status, body) = a
        .call(Method::POST, "/api/housekeeper/runs/abc/cancel", None)
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "abc");
}

#[tokio::test]
async fn toggle_persists_and_validates() {
    let a = api(None).await;
    let path = "/api/housekeeper/tasks/noop/toggle";
    let (status, body) = a
        .call(Method::PATCH, path, Some(r#"{"enabled": false}"#))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["enabled"], false);
    let (_, list) = a.get("/api/housekeeper/tasks").await;
    assert_eq!(list["tasks"][1]["enabled"], false);
    assert!(list["tasks"][1]["nextRunAt"].is_null());
    let (status, body) = a
        .call(Method::PATCH, path, Some(r#"{"enabled": true}"#))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["nextRunAt"].is_string());

    for (bad, needle) in [
        ("not json", "JSON"),
        (r#"{"enabled": "yes"}"#, "enabled"),
        ("{}", "enabled"),
        (r#"{"enabled": true, "extra": 1}"#, "extra"),
    ] {
        let (status, body) = a.call(Method::PATCH, path, Some(bad)).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, needle);
    }
    let big = format!(
        r#"{{"enabled": true, "pad": "{}"}}"#,
        "x".repeat(BODY_LIMIT + 10)
    );
    let (status, body) = a.call(Method::PATCH, path, Some(&big)).await;
    assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE, "larger");
    let (status, body) = a
        .call(
            Method::PATCH,
            "/api/housekeeper/tasks/missing/toggle",
            Some(r#"{"enabled": true}"#),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "missing");
}

#[tokio::test]
async fn run_history_is_paged() {
    let a = api(None).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (_, body) = a
            .call(Method::POST, "/api/housekeeper/tasks/noop/run", None)
            .await;
        let id = body["runId"].as_i64().unwrap();
        a.finished_run("noop", id).await;
        ids.push(id);
    }
    let (status, page) = a
        .get("/api/housekeeper/tasks/noop/runs?limit=2&offset=1")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["total"], 5);
    let got: Vec<i64> = page["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, [ids[3], ids[2]]);
    assert!(
        page["runs"][0].get("output").is_none(),
        "pages carry summaries"
    );

    for (query, needle) in [
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("offset=-1", "offset"),
        ("page=2", "page"),
    ] {
        let (status, body) = a
            .get(&format!("/api/housekeeper/tasks/noop/runs?{query}"))
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, needle);
    }
    let (status, body) = a.get("/api/housekeeper/tasks/missing/runs").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "missing");
    let (status, body) = a
        .get(&format!("/api/housekeeper/tasks/slow/runs/{}", ids[0]))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "slow");
    let (status, body) = a.get("/api/housekeeper/tasks/noop/runs/x1").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "x1");
}

#[tokio::test]
async fn status_summarises_health() {
    let a = api(None).await;
    let (status, body) = a.get("/api/housekeeper/status").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "degraded", "a task failed to load");
    assert_eq!(body["tasks"], 3);
    assert_eq!(body["enabledTasks"], 2);
    assert_eq!(body["loadErrors"][0]["task"], "broken");
    assert_eq!(body["failingTasks"], 0);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let a = api(None).await;
    let (status, body) = a.get("/nope").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "/nope");
    let (status, body) = a.call(Method::DELETE, "/api/housekeeper/tasks", None).await;
    assert_error(status, &body, StatusCode::METHOD_NOT_ALLOWED, "DELETE");
}

/// `{registered, running, scheduled}` as the reference service answers it.
#[tokio::test]
async fn task_status_says_registered_running_and_scheduled() {
    let a = api(None).await;
    let status_of = |name: &'static str| {
        let a = &a;
        async move {
            let (status, body) = a
                .get(&format!("/api/housekeeper/tasks/{name}/status"))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body
        }
    };
    let shape = |registered: bool, running: bool, scheduled: bool| serde_json::json!({"registered": registered, "running": running, "scheduled": scheduled});
    assert_eq!(status_of("noop").await, shape(true, false, true));
    // `slow` has no schedule; it runs once triggered.
    assert_eq!(status_of("slow").await, shape(true, false, false));
    let (status, body) = a
        .call(Method::POST, "/api/housekeeper/tasks/slow/run", None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(status_of("slow").await, shape(true, true, false));
    let id = body["runId"].as_i64().unwrap();
    a.cancel("slow", id).await;
    assert_eq!(status_of("slow").await, shape(true, false, false));

    let (status, body) = a
        .call(
            Method::PATCH,
            "/api/housekeeper/tasks/noop/toggle",
            Some(r#"{"enabled": false}"#),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(status_of("noop").await, shape(true, false, false));

    // A task whose files fail to load, and a name never seen.
    assert_eq!(status_of("broken").await, shape(false, false, false));
    assert_eq!(status_of("nope").await, shape(false, false, false));
}

#[tokio::test]
async fn the_openapi_document_covers_every_route() {
    let a = api(Some("k")).await;
    let (status, _) = a
        .call_with(Method::GET, "/api/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, doc) = a.get("/api/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for (path, method) in [
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
        ("/api/openapi.json", "get"),
        ("/api/housekeeper/tasks", "get"),
        ("/api/housekeeper/tasks/{name}", "get"),
        ("/api/housekeeper/tasks/{name}/run", "post"),
        ("/api/housekeeper/tasks/{name}/toggle", "patch"),
        ("/api/housekeeper/tasks/{name}/status", "get"),
        ("/api/housekeeper/tasks/{name}/runs", "get"),
        ("/api/housekeeper/tasks/{name}/runs/{run_id}", "get"),
        ("/api/housekeeper/runs/{run_id}/cancel", "post"),
        ("/api/housekeeper/status", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing"
        );
    }
    assert!(doc["components"]["schemas"]["TaskList"].is_object());
    assert!(doc["components"]["schemas"]["TaskStatus"].is_object());
    // Names with a fixed set of values list them.
    let values = |schema: &str| -> Vec<String> {
        doc["components"]["schemas"][schema]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{schema} lists no values"))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        values("RunStatus"),
        housekeeper::model::RunStatus::ALL.map(|s| s.as_str())
    );
    assert_eq!(
        values("Trigger"),
        housekeeper::model::Trigger::ALL.map(|t| t.as_str())
    );
    assert_eq!(values("DirMode"), ["ro", "rw"]);
    assert!(values("SqlVerb").contains(&"create_partition".to_owned()));
    assert_eq!(values("Misfire"), ["skip", "run-once"]);
    assert_eq!(
        doc["components"]["schemas"]["RunSummary"]["properties"]["status"]["$ref"],
        "#/components/schemas/RunStatus"
    );
}

/// Holds the guest worker it runs on until released, then runs the task:
/// from outside, a run blocked inside a host call that its deadline cannot
/// stop.
#[derive(Clone)]
struct Blocking {
    release: Arc<std::sync::Mutex<std::sync::mpsc::Receiver<()>>>,
}

impl housekeeper::scheduler::Executor for Blocking {
    fn execute(
        &self,
        component: housekeeper::runtime::TaskComponent,
        request: housekeeper::runtime::RunRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = housekeeper::model::RunResult> + Send>>
    {
        let this = self.clone();
        Box::pin(async move {
            let _ = this.release.lock().unwrap().recv();
            runtime().run(&component, request).await
        })
    }
}

#[tokio::test]
async fn health_is_degraded_while_a_guest_worker_is_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("hk.db").display());
    let store = Store::open(&url, "api-test", &StoreOptions::default())
        .await
        .unwrap();
    let guests = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (release, held) = std::sync::mpsc::channel();
    let scheduler = Scheduler::new(
        Arc::new(Blocking {
            release: Arc::new(std::sync::Mutex::new(held)),
        }),
        store.clone(),
        Arc::new(SystemClock),
        SchedulerConfig {
            run_handle: Some(guests.handle().clone()),
            stuck_after: Duration::from_millis(100),
            ..SchedulerConfig::default()
        },
    );
    let task = def("stuck", "noop", |m| m.timeout = Duration::from_millis(100)).await;
    scheduler.register(vec![task]).await.unwrap();
    scheduler.start().await.unwrap();
    let a = Api {
        _dir: dir,
        router: router(AppState {
            store,
            scheduler,
            metrics: Metrics::default(),
            started: Instant::now(),
            load_errors: Default::default(),
            reloader: None,
            api_token: None,
            stats_cache: Default::default(),
        }),
        token: None,
    };
    let (status, started) = a
        .call(Method::POST, "/api/housekeeper/tasks/stuck/run", None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");

    let health = a.wait_for_health("degraded").await;
    assert_eq!(health["stuckRuns"][0]["task"], "stuck", "{health}");
    assert_eq!(
        health["stuckRuns"][0]["runId"], started["runId"],
        "{health}"
    );
    let (_, status) = a.get("/api/housekeeper/status").await;
    assert_eq!(status["status"], "degraded", "{status}");
    let (_, doc) = a.get("/api/openapi.json").await;
    assert!(doc["components"]["schemas"]["StuckRunView"].is_object());

    // Once the worker is free again, so is the service.
    release.send(()).unwrap();
    let health = a.wait_for_health("healthy").await;
    assert_eq!(health["stuckRuns"], serde_json::json!([]), "{health}");
    guests.shutdown_background();
}

impl Api {
    async fn wait_for_health(&self, wanted: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, health) = self.get("/health").await;
            assert_eq!(status, StatusCode::OK, "{health}");
            if health["status"] == wanted {
                return health;
            }
            assert!(
                Instant::now() < deadline,
                "/health never said {wanted}: {health}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The listing is served from its last serialization while nothing it is
/// made of changed; every change shows at once, including a return to an
/// earlier state (not running → running → not running).
#[tokio::test]
async fn the_task_listing_follows_every_change_at_once() {
    let a = api(None).await;
    let slow = |list: &Value| list["tasks"][2].clone();
    let (_, first) = a.get("/api/housekeeper/tasks").await;
    assert_eq!(slow(&first)["name"], "slow");
    assert_eq!(slow(&first)["isRunning"], false);
    let (_, again) = a.get("/api/housekeeper/tasks").await;
    assert_eq!(again, first);

    let (_, body) = a
        .call(Method::POST, "/api/housekeeper/tasks/slow/run", None)
        .await;
    let id = body["runId"].as_i64().unwrap();
    let (_, running) = a.get("/api/housekeeper/tasks").await;
    assert_eq!(slow(&running)["isRunning"], true);
    assert_eq!(running["runningTasks"], 1);

    a.cancel("slow", id).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, list) = a.get("/api/housekeeper/tasks").await;
        if slow(&list)["isRunning"] == false {
            assert_eq!(list["runningTasks"], 0);
            // The run is counted: the stats moved on too.
            assert_ne!(slow(&list)["stats"], slow(&first)["stats"], "{list}");
            break;
        }
        assert!(Instant::now() < deadline, "still shown running: {list}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    a.call(
        Method::PATCH,
        "/api/housekeeper/tasks/noop/toggle",
        Some(r#"{"enabled": false}"#),
    )
    .await;
    let (_, toggled) = a.get("/api/housekeeper/tasks").await;
    assert_eq!(toggled["tasks"][1]["enabled"], false);
}

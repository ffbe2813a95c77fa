//! `housekeeper serve`: scheduled runs, hot reload, the drain, persisted
//! toggles, load errors, over HTTP with the service run in the test process
//! (`server::run` on `127.0.0.1:0`); signals (SIGTERM, SIGHUP, kill -9),
//! process limits, compile workers, the log and bad configuration with the
//! real binary.

use housekeeper::config::ServeArgs;
use housekeeper::model::{RunStatus, Trigger};
use housekeeper::store::{RunRecord, Store, StoreOptions};
use housekeeper_tests::{Server, binary, fixture_path, http, http_json, listening_port};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Service {
    _tmp: tempfile::TempDir,
    tasks: PathBuf,
    data: PathBuf,
}

impl Service {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let tasks = tmp.path().join("tasks.d");
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&tasks).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        Service {
            _tmp: tmp,
            tasks,
            data,
        }
    }

    fn task(&self, name: &str, fixture: &str, manifest: &str) {
        std::fs::copy(
            fixture_path(fixture),
            self.tasks.join(format!("{name}.wasm")),
        )
        .unwrap();
        std::fs::write(self.tasks.join(format!("{name}.toml")), manifest).unwrap();
    }

    /// The service in this process, with `edit` applied to the usual
    /// configuration; ready when this returns.
    fn serve(&self, edit: impl FnOnce(&mut ServeArgs)) -> Server {
        let mut args = housekeeper_tests::serve_args(&self.tasks, &self.data);
        edit(&mut args);
        Server::start(args)
    }

    /// The real binary, on a port of its choosing (`PORT=0`).
    fn command(&self) -> Command {
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .env_remove("DATABASE_URL")
            .env_remove("DB_HOST")
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("HOUSEKEEPER_TASKS_DIR", &self.tasks)
            .env("HOUSEKEEPER_DATA_DIR", &self.data)
            .env("HOUSEKEEPER_REPLICA", "test-replica")
            .env("LOG_LEVEL", "info")
            .stdout(Stdio::null())
            // A file, not a pipe: nobody drains a pipe while the test runs,
            // and a service blocked on a full pipe would hang the test.
            .stderr(self.log_file());
        cmd
    }

    fn log_path(&self) -> PathBuf {
        self._tmp.path().join("serve.log")
    }

    fn log_file(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap()
    }

    /// Everything the service processes of this test logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts `cmd` (from [`Service::command`]) and returns it with the
    /// port it listens on.
    fn spawn(&self, cmd: &mut Command) -> (Running, u16) {
        let from = std::fs::metadata(self.log_path()).map_or(0, |m| m.len() as usize);
        let mut child = Running(cmd.spawn().unwrap());
        let port = listening_port(&mut child, &self.log_path(), from);
        (child, port)
    }

    /// Starts the real binary and waits until `/ready` says it is (store
    /// open, tasks loaded).
    fn start(&self, extra_env: &[(&str, &str)]) -> (Running, u16) {
        let mut cmd = self.command();
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let (mut child, port) = self.spawn(&mut cmd);
        wait_for("the service to be ready", || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("serve exited early with {status}: {}", self.log());
            }
            get(port, "/ready").is_some_and(|(status, _)| status == 200)
        });
        (child, port)
    }

    async fn store(&self) -> Store {
        let url = format!("sqlite:{}", self.data.join("housekeeper.db").display());
        Store::open(&url, "observer", &StoreOptions::default())
            .await
            .unwrap()
    }

    async fn runs(&self, task: &str) -> Vec<RunRecord> {
        self.store().await.runs(task, 1000).await.unwrap()
    }
}

/// A service process that is killed when the test ends, even by a panic.
struct Running(Child);

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The demo `scripts/start.sh` serves, set up by `scripts/demo.sh` over a
/// tasks directory holding a manifest-less bundled component (as earlier
/// versions of the script left it), starts healthy: the component is gone,
/// the startup run succeeds, nothing fails to load.
#[tokio::test]
async fn the_demo_starts_healthy() {
    let s = Service::new();
    let dir = s.tasks.parent().unwrap();
    std::fs::copy(
        housekeeper_tests::task_path("partition-maintenance"),
        s.tasks.join("partition-maintenance.wasm"),
    )
    .unwrap();
    let setup = Command::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/demo.sh"))
        .arg(dir)
        .env("CARGO_TARGET_DIR", housekeeper_tests::target_dir())
        .output()
        .unwrap();
    assert!(setup.status.success(), "{setup:?}");
    assert!(!s.tasks.join("partition-maintenance.wasm").exists());
    let logs = dir.join("data/demo-logs");
    assert_eq!(std::fs::read_dir(&logs).unwrap().count(), 30);

    let server = s.serve(|_| {});
    let port = server.port();
    let runs = wait_for_runs(&s, "cleanup-old-logs", "the startup run", |runs| {
        runs.iter().any(|r| r.status != RunStatus::Running)
    })
    .await;
    assert_eq!(runs[0].status, RunStatus::Success, "{:?}", runs[0]);
    // Older than 7 days, or past the 20 newest.
    assert_eq!(std::fs::read_dir(&logs).unwrap().count(), 7);
    let (code, body) = get(port, "/api/housekeeper/status").unwrap();
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["status"], "healthy", "{status}");
    assert_eq!(status["tasks"], 1, "{status}");
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    http(port, "GET", path, None)
}

/// Polls `condition` until it holds; fails after a generous bound.
fn wait_for(what: &str, condition: impl FnMut() -> bool) {
    housekeeper_tests::wait_until(what, Duration::from_secs(60), condition);
}

async fn wait_for_runs(
    service: &Service,
    task: &str,
    what: &str,
    check: impl Fn(&[RunRecord]) -> bool,
) -> Vec<RunRecord> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs = service.runs(task).await;
        if check(&runs) {
            return runs;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {runs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn command_output(cmd: &mut Command) -> std::process::Output {
    cmd.stderr(Stdio::piped()).output().unwrap()
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[tokio::test]
async fn scheduled_runs_repeat_and_are_recorded() {
    let s = Service::new();
    s.task("tick", "noop", "schedule = \"* * * * * *\"\n");
    let server = s.serve(|_| {});
    let port = server.port();
    let (status, body) = get(port, "/ready").unwrap();
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&get(port, "/health").unwrap().1).unwrap();
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["service"], "housekeeper");

    let runs = wait_for_runs(&s, "tick", "three scheduled runs", |r| {
        r.iter().filter(|r| r.status == RunStatus::Success).count() >= 3
    })
    .await;
    server.stop().unwrap();
    for r in runs.iter().filter(|r| r.status == RunStatus::Success) {
        assert_eq!(r.triggered_by, Trigger::Schedule);
        assert_eq!(r.replica, "test-replica");
        assert_eq!(r.component_hash.as_ref().unwrap().len(), 64);
        let at = r.scheduled_for.unwrap();
        assert_eq!(at.timestamp_subsec_nanos(), 0, "fires on whole seconds");
    }
    let stats = s.store().await.stats().await.unwrap();
    assert!(stats["tick"].success_count >= 3);
}

#[tokio::test]
async fn sigterm_waits_for_a_running_task_then_records_it() {
    let s = Service::new();
    // Spins until its 2 s deadline: the run ends `timeout` on its own.
    s.task(
        "long",
        "hostile",
        "run_on_startup = true\ntimeout = \"2s\"\n[limits]\nfuel = 1_000_000_000_000_000\n[config]\nmode = \"spin\"\n",
    );
    let (mut child, _) = s.start(&[]);
    wait_for_runs(&s, "long", "the run to start", |r| {
        r.iter().any(|r| r.status == RunStatus::Running)
    })
    .await;
    signal(&child, "-TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "{}", s.log());
    let runs = s.runs("long").await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Timeout, "{runs:#?}");
    assert_eq!(runs[0].triggered_by, Trigger::Startup);
}

#[tokio::test]
async fn shutdown_interrupts_what_outlives_the_grace_period() {
    let s = Service::new();
    s.task(
        "endless",
        "hostile",
        "run_on_startup = true\ntimeout = \"10m\"\n[limits]\nfuel = 1_000_000_000_000_000\n[config]\nmode = \"spin\"\n",
    );
    let server = s.serve(|a| a.shutdown_grace = Duration::from_secs(1));
    wait_for_runs(&s, "endless", "the run to start", |r| {
        r.iter().any(|r| r.status == RunStatus::Running)
    })
    .await;
    server.stop().unwrap();
    let runs = s.runs("endless").await;
    assert_eq!(runs[0].status, RunStatus::Interrupted, "{runs:#?}");
    assert!(runs[0].error.as_deref().unwrap().contains("shut down"));
}

#[tokio::test]
async fn kill_9_leaves_a_row_that_the_next_start_marks_interrupted() {
    let s = Service::new();
    s.task(
        "endless",
        "hostile",
        "run_on_startup = true\ntimeout = \"10m\"\n[limits]\nfuel = 1_000_000_000_000_000\n[config]\nmode = \"spin\"\n",
    );
    let (mut child, _) = s.start(&[]);
    let runs = wait_for_runs(&s, "endless", "the run to start", |r| {
        r.iter().any(|r| r.status == RunStatus::Running)
    })
    .await;
    let id = runs[0].id;
    signal(&child, "-KILL");
    child.wait().unwrap();
    assert_eq!(
        s.store().await.run(id).await.unwrap().unwrap().status,
        RunStatus::Running
    );

    // Next start: no startup run this time, only recovery.
    s.task("endless", "hostile", "[config]\nmode = \"spin\"\n");
    let (mut child, _) = s.start(&[]);
    let row = s.store().await.run(id).await.unwrap().unwrap();
    assert_eq!(row.status, RunStatus::Interrupted);
    assert!(row.completed_at.is_some());
    signal(&child, "-TERM");
    assert!(child.wait().unwrap().success());
}

#[tokio::test]
async fn a_toggled_off_task_stays_off_across_restarts() {
    let s = Service::new();
    s.task("tick", "noop", "schedule = \"* * * * * *\"\n");
    s.task("other", "noop", "schedule = \"* * * * * *\"\n");
    let server = s.serve(|_| {});
    let toggle = |port, enabled: bool| {
        let body = format!("{{\"enabled\": {enabled}}}");
        http_json(
            port,
            "PATCH",
            "/api/housekeeper/tasks/tick/toggle",
            None,
            &body,
        )
        .unwrap()
    };
    let (status, body) = toggle(server.port(), false);
    assert_eq!(status, 200, "{body}");
    assert_eq!(api_task(server.port(), "tick")["enabled"], false);
    server.stop().unwrap();
    let ran = s.runs("tick").await.len();

    let server = s.serve(|_| {});
    assert_eq!(api_task(server.port(), "tick")["enabled"], false);
    // `other` fires on the same schedule: two of its runs after the
    // restart are two fires `tick` would have had.
    let before = s.runs("other").await.len();
    wait_for_runs(&s, "other", "the other task to run twice", |r| {
        r.len() >= before + 2
    })
    .await;
    assert_eq!(s.runs("tick").await.len(), ran);
    // Toggled on again, it fires again.
    assert_eq!(toggle(server.port(), true).0, 200);
    wait_for_runs(&s, "tick", "a run once enabled", |r| r.len() > ran).await;
    server.stop().unwrap();
}

#[tokio::test]
async fn globally_disabled_scheduling_fires_nothing() {
    let s = Service::new();
    s.task(
        "tick",
        "noop",
        "schedule = \"* * * * * *\"\nrun_on_startup = true\n",
    );
    let server = s.serve(|a| a.enabled = false);
    let port = server.port();
    let (_, status) = get(port, "/api/housekeeper/tasks/tick/status").unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["registered"], true, "{status}");
    assert_eq!(status["scheduled"], false, "{status}");
    // Showing that nothing fires takes time in which something would have:
    // `tick` was due at startup and at every whole second; let two whole
    // seconds pass, the shortest wait that surely holds a fire time.
    let ready = chrono::Utc::now().timestamp();
    wait_for("two fire times to pass", || {
        chrono::Utc::now().timestamp() > ready + 1
    });
    // A manual run still works, and ends after any fire would have been
    // recorded.
    let (code, body) = http(port, "POST", "/api/housekeeper/tasks/tick/run", None).unwrap();
    assert_eq!(code, 202, "{body}");
    let runs = wait_for_runs(&s, "tick", "the manual run", |r| {
        r.iter().all(|r| r.status != RunStatus::Running) && !r.is_empty()
    })
    .await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].triggered_by, Trigger::Manual, "{runs:#?}");
    server.stop().unwrap();
}

#[test]
fn bad_configuration_fails_at_start_naming_the_variable() {
    let s = Service::new();
    for (name, value) in [
        ("PORT", "eighty"),
        ("HOUSEKEEPER_ENABLED", "perhaps"),
        ("TIMEZONE", "Mars/Base"),
        ("HOUSEKEEPER_SHUTDOWN_GRACE", "soon"),
        ("HOUSEKEEPER_LEASE", "a while"),
        ("HOUSEKEEPER_LEASE", "2s"),
        ("HOUSEKEEPER_LEASE", "11m"),
        ("LOG_FORMAT", "xml"),
        ("LOG_LEVEL", "very=loud=indeed"),
    ] {
        let out = command_output(s.command().env(name, value));
        assert!(!out.status.success(), "{name}={value} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(name), "{name}: {err}");
    }
    // An unreachable database is waited for (it may be starting too), and
    // named in the log without its password.
    let (mut child, port) = s.spawn(
        s.command()
            .env("DATABASE_URL", "postgres://hk:secret@127.0.0.1:1/none")
            .env("DB_CONNECT_TIMEOUT", "500"),
    );
    wait_for("the wait for the database to be logged twice", || {
        s.log().matches("waiting for the database").count() >= 2
    });
    assert!(child.try_wait().unwrap().is_none(), "{}", s.log());
    let (status, body) = get(port, "/health").unwrap();
    assert_eq!(status, 200, "{body}");
    let log = s.log();
    assert!(log.contains("127.0.0.1:1/none"), "{log}");
    assert!(!log.contains("secret"), "{log}");
    signal(&child, "-TERM");
    assert!(child.wait().unwrap().success(), "{}", s.log());
}

#[tokio::test]
async fn a_broken_task_does_not_stop_the_others() {
    let s = Service::new();
    s.task("tick", "noop", "schedule = \"* * * * * *\"\n");
    std::fs::write(s.tasks.join("broken.toml"), "schedule = \"every day\"\n").unwrap();
    std::fs::copy(fixture_path("wrong-world"), s.tasks.join("alien.wasm")).unwrap();
    let server = s.serve(|_| {});
    wait_for_runs(&s, "tick", "a run", |r| !r.is_empty()).await;
    let broken = api_task(server.port(), "broken")["loadError"].to_string();
    assert!(broken.contains("broken.toml"), "{broken}");
    let alien = api_task(server.port(), "alien")["loadError"].to_string();
    assert!(alien.contains("not a housekeeper task"), "{alien}");
    server.stop().unwrap();
}

#[tokio::test]
async fn a_run_triggered_over_http_is_fetched_by_id() {
    let s = Service::new();
    s.task("noop", "noop", "");
    let server = s.serve(|a| a.api_token = Some("t0ken".into()));
    let port = server.port();
    let (status, _) = http(port, "POST", "/api/housekeeper/tasks/noop/run", None).unwrap();
    assert_eq!(status, 401);
    let (status, body) = http(
        port,
        "POST",
        "/api/housekeeper/tasks/noop/run",
        Some("t0ken"),
    )
    .unwrap();
    assert_eq!(status, 202, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = body["runId"].as_i64().unwrap();
    let path = format!("/api/housekeeper/tasks/noop/runs/{id}");
    let mut run = serde_json::Value::Null;
    wait_for("the run to finish", || {
        let (_, text) = http(port, "GET", &path, Some("t0ken")).unwrap();
        run = serde_json::from_str(&text).unwrap();
        run["status"] != "running"
    });
    assert_eq!(run["status"], "success");
    assert_eq!(run["output"], "nothing to do");
    let (status, metrics) = get(port, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("housekeeper_runs_total"), "{metrics}");
    server.stop().unwrap();
}

#[test]
fn an_open_api_on_a_public_address_is_warned_about() {
    let s = Service::new();
    s.task("noop", "noop", "");
    let (mut child, port) = s.spawn(s.command().env("HOST", "0.0.0.0"));
    wait_for("the service to answer /health", || {
        get(port, "/health").is_some()
    });
    signal(&child, "-TERM");
    assert!(child.wait().unwrap().success());
    let log = s.log();
    assert!(log.contains("HOUSEKEEPER_API_TOKEN is not set"), "{log}");

    // On loopback there is nothing to warn about.
    let s = Service::new();
    s.task("noop", "noop", "");
    let (mut child, _) = s.start(&[]);
    signal(&child, "-TERM");
    assert!(child.wait().unwrap().success());
    assert!(!s.log().contains("HOUSEKEEPER_API_TOKEN is not set"));
}

/// Writes `bytes` to `dir/name` the recommended way: a temporary name in the
/// same directory, then a rename.
fn drop_file(dir: &std::path::Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.partial"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn api_task(port: u16, name: &str) -> serde_json::Value {
    let (_, body) = get(port, "/api/housekeeper/tasks").unwrap();
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    list["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

#[tokio::test]
async fn hot_reload_adds_changes_and_removes_tasks() {
    let s = Service::new();
    s.task("canary", "noop", "schedule = \"* * * * * *\"\n");
    let server = s.serve(|_| {});
    let port = server.port();

    // Drop in a new task: it runs on schedule without a restart.
    drop_file(
        &s.tasks,
        "tick.wasm",
        &std::fs::read(fixture_path("noop")).unwrap(),
    );
    drop_file(&s.tasks, "tick.toml", b"schedule = \"0 0 1 1 *\"\n");
    wait_for("tick to be registered", || {
        api_task(port, "tick")["schedule"] == "0 0 1 1 *"
    });
    assert!(s.runs("tick").await.is_empty());

    // A manifest-only change takes effect: now every second.
    drop_file(&s.tasks, "tick.toml", b"schedule = \"* * * * * *\"\n");
    wait_for_runs(&s, "tick", "runs on the new schedule", |r| r.len() >= 2).await;
    let hash = s.runs("tick").await[0].component_hash.clone().unwrap();

    // Broken files never replace the working version; the error shows.
    for (file, bytes) in [
        ("tick.wasm", b"\0asm\x01\0\0\0".to_vec()),
        ("tick.wasm", vec![0x42; 2048]),
        (
            "tick.toml",
            b"schedule = \"* * * * * *\"\nretention = 3\n".to_vec(),
        ),
        ("tick.toml", b"schedule = \"every second\"\n".to_vec()),
        (
            "tick.toml",
            b"component = \"nope.wasm\"\nschedule = \"* * * * * *\"\n".to_vec(),
        ),
    ] {
        let good = std::fs::read(s.tasks.join(file)).unwrap();
        drop_file(&s.tasks, file, &bytes);
        wait_for("the load error to show", || {
            api_task(port, "tick")["loadError"].is_string()
        });
        let before = s.runs("tick").await.len();
        wait_for_runs(&s, "tick", "the old version to keep running", |r| {
            r.len() >= before + 2
        })
        .await;
        // Every run that ran (a fire skipped by the overlap policy on a
        // busy machine runs nothing) ran the old component.
        let runs = s.runs("tick").await;
        assert!(
            runs.iter()
                .filter(|r| r.status != RunStatus::Skipped)
                .all(|r| r.component_hash.as_ref() == Some(&hash)),
            "{runs:#?}"
        );
        drop_file(&s.tasks, file, &good);
        wait_for("the error to clear", || {
            api_task(port, "tick")["loadError"].is_null()
        });
    }
    // The other task was never disturbed.
    assert!(api_task(port, "canary")["loadError"].is_null());

    // Removed: unregistered, no more runs.
    std::fs::remove_file(s.tasks.join("tick.toml")).unwrap();
    std::fs::remove_file(s.tasks.join("tick.wasm")).unwrap();
    wait_for("tick to be gone", || api_task(port, "tick").is_null());
    let settled = s.runs("tick").await.len();
    // `canary` fires on the schedule `tick` had: two more of its runs are
    // two fires `tick` would have had.
    let canary = s.runs("canary").await.len();
    wait_for_runs(&s, "canary", "two more fires", |r| r.len() >= canary + 2).await;
    assert!(
        s.runs("tick").await.len() <= settled + 1,
        "at most one run was already under way"
    );
    server.stop().unwrap();
}

#[tokio::test]
async fn a_replaced_component_applies_to_new_runs_while_a_running_one_finishes() {
    let s = Service::new();
    // Old version: spins until its 3 s deadline.
    s.task(
        "flip",
        "hostile",
        "run_on_startup = true\ntimeout = \"3s\"\n[limits]\nfuel = 1_000_000_000_000_000\n[config]\nmode = \"spin\"\n",
    );
    let server = s.serve(|_| {});
    let port = server.port();
    let runs = wait_for_runs(&s, "flip", "the old version to start", |r| {
        r.iter().any(|r| r.status == RunStatus::Running)
    })
    .await;
    let old_hash = runs[0].component_hash.clone().unwrap();

    // New version: the no-op component, every second.
    drop_file(
        &s.tasks,
        "flip.wasm",
        &std::fs::read(fixture_path("noop")).unwrap(),
    );
    drop_file(&s.tasks, "flip.toml", b"schedule = \"* * * * * *\"\n");
    let runs = wait_for_runs(&s, "flip", "a run of the new version", |r| {
        r.iter().any(|r| r.status == RunStatus::Success)
    })
    .await;
    let first = runs
        .iter()
        .find(|r| r.id == runs.iter().map(|r| r.id).min().unwrap())
        .unwrap();
    assert_eq!(
        first.status,
        RunStatus::Timeout,
        "the old run finished on the old version"
    );
    assert_eq!(first.component_hash.as_ref(), Some(&old_hash));
    let new = runs
        .iter()
        .find(|r| r.status == RunStatus::Success)
        .unwrap();
    assert_ne!(new.component_hash.as_ref(), Some(&old_hash));

    // POST /reload answers with what it did (nothing changed now).
    let (status, body) = http(port, "POST", "/api/housekeeper/reload", None).unwrap();
    assert_eq!(status, 200, "{body}");
    let summary: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(summary["replaced"], serde_json::json!([]));
    server.stop().unwrap();
}

#[tokio::test]
async fn a_slowly_copied_component_is_loaded_once_complete() {
    let s = Service::new();
    s.task("canary", "noop", "");
    let server = s.serve(|_| {});
    let port = server.port();
    std::fs::write(s.tasks.join("slow.toml"), "schedule = \"* * * * * *\"\n").unwrap();
    let bytes = std::fs::read(housekeeper_tests::task_path("cleanup-old-logs")).unwrap();
    // Copied in place, in pieces, each piece read by a rescan of its own.
    let mut file = std::fs::File::create(s.tasks.join("slow.wasm")).unwrap();
    for chunk in bytes.chunks(bytes.len() / 4 + 1) {
        let before = rescans(port).get("file").copied().unwrap_or(0);
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        wait_for("a rescan of the partial file", || {
            rescans(port).get("file").copied().unwrap_or(0) > before
        });
    }
    drop(file);
    wait_for("the complete component to load", || {
        let t = api_task(port, "slow");
        t["loadError"].is_null() && t["schedule"] == "* * * * * *"
    });
    let runs = wait_for_runs(&s, "slow", "a run", |r| {
        r.iter().any(|r| r.status != RunStatus::Running)
    })
    .await;
    use sha2::Digest;
    let expected = hex_digest(&sha2::Sha256::digest(&bytes));
    assert!(
        runs.iter()
            .all(|r| r.component_hash.as_deref() == Some(expected.as_str()))
    );
    server.stop().unwrap();
}

fn hex_digest(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn sighup_rescans_the_tasks_directory() {
    let s = Service::new();
    s.task("canary", "noop", "");
    let (mut child, port) = s.start(&[]);
    assert_eq!(rescans(port).get("signal"), None);
    signal(&child, "-HUP");
    wait_for("the rescan", || rescans(port).get("signal") == Some(&1));
    assert!(
        s.log().contains("SIGHUP: rescanning the tasks directory"),
        "{}",
        s.log()
    );
    // Every SIGHUP rescans, not only the first.
    signal(&child, "-HUP");
    wait_for("the second rescan", || {
        rescans(port).get("signal") == Some(&2)
    });
    signal(&child, "-TERM");
    assert!(child.wait().unwrap().success(), "{}", s.log());
}

/// `housekeeper_task_rescans_total` by cause, from `/metrics`.
fn rescans(port: u16) -> std::collections::BTreeMap<String, u64> {
    let (_, text) = get(port, "/metrics").unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("housekeeper_task_rescans_total{cause=\""))
        .filter_map(|l| {
            let (cause, count) = l.split_once("\"} ")?;
            Some((cause.to_owned(), count.trim().parse().ok()?))
        })
        .collect()
}

/// What this test shows is that some events start no rescan, which takes
/// a pause in which they would have: longer than the debounce (20 ms), so
/// that the events a step caused are handled apart from the change
/// [`settle`] makes next. A machine too slow for it can only hide a rescan
/// that should not happen, never fail the test.
const QUIET: Duration = Duration::from_millis(200);

/// After [`QUIET`], changes the attributes of `canary.toml` (which
/// rescans) and waits for `file` rescans to reach `file`, counting that
/// one: every event before it has been handled by then. Returns the counts.
fn settle(s: &Service, port: u16, file: u64) -> std::collections::BTreeMap<String, u64> {
    std::thread::sleep(QUIET);
    let canary = std::fs::File::options()
        .write(true)
        .open(s.tasks.join("canary.toml"))
        .unwrap();
    canary
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
        .unwrap();
    wait_for("the rescan of the attribute change", || {
        rescans(port).get("file").copied().unwrap_or(0) >= file
    });
    rescans(port)
}

#[tokio::test]
async fn only_changes_to_catalog_files_rescan_the_tasks_directory() {
    let s = Service::new();
    s.task("canary", "noop", "schedule = \"* * * * * *\"\n");
    std::fs::write(s.tasks.join("broken.toml"), "no_such_key = 1\n").unwrap();
    let (mut child, port) = s.start(&[]);
    wait_for("the rescan when watching starts", || {
        rescans(port).get("startup") == Some(&1)
    });

    // The service's own reads (a forced rescan opens every file, and runs
    // go on) start nothing.
    let (status, _) = http(port, "POST", "/api/housekeeper/reload", None).unwrap();
    assert_eq!(status, 200);
    let after_reads = settle(&s, port, 1);
    assert_eq!(
        after_reads,
        [
            ("api".to_owned(), 1),
            ("file".to_owned(), 1),
            ("startup".to_owned(), 1)
        ]
        .into(),
        "{}",
        s.log()
    );

    // Neither do reads by others, nor names the catalog does not read.
    for name in ["canary.toml", "canary.wasm", "broken.toml"] {
        std::fs::read(s.tasks.join(name)).unwrap();
    }
    for name in [
        ".new.toml.swp",
        "new.toml~",
        "#new.toml#",
        "4913",
        "x.wasm.partial",
        "notes.txt",
    ] {
        std::fs::write(s.tasks.join(name), "x").unwrap();
        std::fs::remove_file(s.tasks.join(name)).unwrap();
    }
    std::fs::create_dir(s.tasks.join("cache")).unwrap();
    std::fs::write(s.tasks.join("cache").join("a.wasm"), "x").unwrap();
    let mut expected = after_reads.clone();
    expected.insert("file".into(), 2);
    assert_eq!(settle(&s, port, 2), expected, "{}", s.log());

    // One atomic rename of a new component: exactly one rescan.
    let outside = s._tmp.path().join("new.wasm");
    std::fs::copy(fixture_path("noop"), &outside).unwrap();
    std::fs::rename(&outside, s.tasks.join("new.wasm")).unwrap();
    wait_for("the new task", || !api_task(port, "new").is_null());
    expected.insert("file".into(), 4);
    assert_eq!(settle(&s, port, 4), expected, "{}", s.log());

    // The broken manifest failed on each of those rescans: logged once.
    let logged = |s: &Service| {
        s.log()
            .lines()
            .filter(|l| l.contains("task failed to load") && l.contains("broken"))
            .count()
    };
    assert_eq!(logged(&s), 1, "{}", s.log());
    // Still visible in the API.
    let error = api_task(port, "broken")["loadError"].to_string();
    assert!(error.contains("no_such_key"), "{error}");
    // A different error is logged again.
    drop_file(&s.tasks, "broken.toml", b"schedule = \"not cron\"\n");
    wait_for("the new error to be logged", || logged(&s) == 2);

    signal(&child, "-TERM");
    assert!(child.wait().unwrap().success(), "{}", s.log());
}

#[tokio::test]
async fn a_compile_bomb_is_a_load_error_while_other_tasks_keep_running() {
    let s = Service::new();
    s.task("canary", "noop", "schedule = \"* * * * * *\"\n");
    let server = s.serve(|a| a.compile.compile_memory = 64 << 20);
    let port = server.port();
    drop_file(
        &s.tasks,
        "bomb.wasm",
        &housekeeper_tests::compile_bomb(300_000),
    );
    wait_for("the bomb's load error", || {
        api_task(port, "bomb")["loadError"]
            .as_str()
            .is_some_and(|e| e.contains("HOUSEKEEPER_COMPILE_MEMORY"))
    });
    let before = s.runs("canary").await.len();
    wait_for_runs(&s, "canary", "more runs after the bomb", |r| {
        r.len() >= before + 2
    })
    .await;
    server.stop().unwrap();
}

/// A directory beside the service's own, for a task to be granted.
fn grant_dir(s: &Service, name: &str) -> PathBuf {
    let dir = s.tasks.parent().unwrap().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn until_exit(child: &mut Running) -> std::process::ExitStatus {
    let mut status = None;
    wait_for("the service to exit", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status.unwrap()
}

#[tokio::test]
async fn a_fifo_in_a_grant_neither_hangs_its_run_nor_holds_a_guest_worker() {
    let s = Service::new();
    let data = grant_dir(&s, "spool");
    housekeeper_tests::mknod(&data.join("fifo"), rustix::fs::FileType::Fifo, 0, 0);
    s.task(
        "fifo",
        "fs-hog",
        &format!(
            "run_on_startup = true\ntimeout = \"5s\"\n\n[[grants.dirs]]\nhost = \"{}\"\nguest = \"/data\"\nmode = \"rw\"\n\n[config]\nmode = \"open\"\npath = \"/data/fifo\"\n",
            data.display()
        ),
    );
    s.task("after", "noop", "schedule = \"* * * * * *\"\n");
    // One guest worker and one run at a time: a run blocked in open(2)
    // would hold both for good.
    let server = s.serve(|a| {
        a.max_concurrent_runs = 1;
        a.shutdown_grace = Duration::from_secs(2);
    });
    let port = server.port();
    let runs = wait_for_runs(&s, "fifo", "the FIFO run to end", |r| {
        r.iter().any(|r| r.status != RunStatus::Running)
    })
    .await;
    let fifo = &runs[0];
    assert_eq!(fifo.status, RunStatus::Error, "{fifo:#?}");
    assert!(
        fifo.error.as_deref().unwrap().contains("/data/fifo"),
        "{fifo:#?}"
    );
    let output = fifo.output.as_deref().unwrap_or_default();
    assert!(
        output.contains("refused to open") && output.contains("a FIFO"),
        "{output}"
    );
    let ended = fifo.completed_at.unwrap();
    wait_for_runs(&s, "after", "another task to run after it", |r| {
        r.iter()
            .any(|r| r.status == RunStatus::Success && r.started_at > ended)
    })
    .await;
    let health: serde_json::Value = serde_json::from_str(&get(port, "/health").unwrap().1).unwrap();
    assert_eq!(health["status"], "healthy", "{health}");
    server.stop().unwrap();
}

/// A grant that reaches a filesystem whose server never answers (a FUSE
/// mount inside it, as an NFS mount whose server is gone would be): the
/// task's call into it waits, yet its run ends at its deadline, the one
/// guest worker is free for the next task, and the service stops within
/// its grace period.
#[tokio::test]
async fn a_filesystem_that_never_answers_ends_its_run_at_the_deadline_and_frees_the_worker() {
    let s = Service::new();
    let data = grant_dir(&s, "remote");
    std::fs::create_dir(data.join("hung")).unwrap();
    let hung = housekeeper_tests::HungFilesystem::mount(&data.join("hung"));
    s.task(
        "stalled",
        "fs-hog",
        &format!(
            "run_on_startup = true\ntimeout = \"2s\"\n\n[[grants.dirs]]\nhost = \"{}\"\nguest = \"/data\"\nmode = \"ro\"\n\n[config]\nmode = \"open\"\npath = \"/data/hung/file\"\n",
            data.display()
        ),
    );
    s.task("after", "noop", "schedule = \"* * * * * *\"\n");
    let server = s.serve(|a| {
        a.max_concurrent_runs = 1;
        a.shutdown_grace = Duration::from_secs(2);
    });
    let runs = wait_for_runs(&s, "stalled", "the stalled run to end", |r| {
        r.iter().any(|r| r.status != RunStatus::Running)
    })
    .await;
    let stalled = &runs[0];
    assert_eq!(stalled.status, RunStatus::Timeout, "{stalled:#?}");
    let ended = stalled.completed_at.unwrap();
    wait_for_runs(&s, "after", "another task to run after it", |r| {
        r.iter()
            .any(|r| r.status == RunStatus::Success && r.started_at > ended)
    })
    .await;
    // The call still waiting on the filesystem does not hold the stop.
    server.stop().unwrap();
    drop(hung);
}

/// A failed run whose retry waits out its backoff: cancelling the run
/// cancels the retry, recorded skipped with why, and it never runs; asked
/// again, there is nothing left to cancel.
#[tokio::test]
async fn cancelling_a_failed_run_cancels_its_waiting_retry() {
    let s = Service::new();
    let dir = grant_dir(&s, "witness");
    s.task(
        "flaky",
        "witness",
        &format!(
            "[retries]\nmax = 1\nbackoff = \"1h\"\n\n[[grants.dirs]]\nhost = \"{}\"\nguest = \"/witness\"\nmode = \"rw\"\n\n[config]\ndir = \"/witness\"\nfail_once = true\n",
            dir.display()
        ),
    );
    let server = s.serve(|_| {});
    let port = server.port();
    let (status, body) = http(port, "POST", "/api/housekeeper/tasks/flaky/run", None).unwrap();
    assert_eq!(status, 202, "{body}");
    let runs = wait_for_runs(&s, "flaky", "the failed run", |r| {
        r.iter().any(|r| r.status == RunStatus::Error)
    })
    .await;
    let failed = runs
        .iter()
        .find(|r| r.status == RunStatus::Error)
        .unwrap()
        .id;
    let path = format!("/api/housekeeper/runs/{failed}/cancel");
    let (status, body) = http(port, "POST", &path, None).unwrap();
    assert_eq!(status, 202, "{body}");
    assert!(body.contains("retry"), "{body}");
    let runs = wait_for_runs(&s, "flaky", "the retry recorded skipped", |r| {
        r.iter()
            .any(|r| r.triggered_by == Trigger::Retry && r.status == RunStatus::Skipped)
    })
    .await;
    let retry = runs
        .iter()
        .find(|r| r.triggered_by == Trigger::Retry)
        .unwrap();
    assert!(
        retry
            .error
            .as_deref()
            .unwrap()
            .contains("cancelled on request"),
        "{retry:#?}"
    );
    assert_eq!(runs.len(), 2, "{runs:#?}");
    let (status, body) = http(port, "POST", &path, None).unwrap();
    assert_eq!(status, 409, "{body}");
    server.stop().unwrap();
}

#[tokio::test]
async fn a_run_hoarding_files_leaves_the_service_its_own() {
    use std::os::unix::process::CommandExt;
    let s = Service::new();
    let data = grant_dir(&s, "files");
    std::fs::write(data.join("f"), "x").unwrap();
    // Asks for far more than the service can give: its share bounds it.
    s.task(
        "hog",
        "fs-hog",
        &format!(
            "run_on_startup = true\ntimeout = \"60s\"\n\n[limits]\ndescriptors = 100000\n\n[[grants.dirs]]\nhost = \"{}\"\nguest = \"/data\"\nmode = \"ro\"\n\n[config]\nmode = \"hold-files\"\npath = \"/data/f\"\ncount = 100000\nlinger_ms = 3000\n",
            data.display()
        ),
    );
    s.task("tick", "noop", "schedule = \"* * * * * *\"\n");
    let mut cmd = s.command();
    cmd.env("HOUSEKEEPER_MAX_CONCURRENT_RUNS", "2");
    // A low soft limit under a higher hard one, as many systems start
    // services with.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setrlimit(
                rustix::process::Resource::Nofile,
                rustix::process::Rlimit {
                    current: Some(128),
                    maximum: Some(512),
                },
            )?;
            Ok(())
        });
    }
    let (mut child, port) = s.spawn(&mut cmd);
    wait_for("the service to be ready", || {
        get(port, "/ready").is_some_and(|(status, _)| status == 200)
    });
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        open_files.split_whitespace().collect::<Vec<_>>()[3..5],
        ["512", "512"],
        "{open_files}"
    );

    // While the hog holds all it could get, the service keeps answering.
    let deadline = Instant::now() + Duration::from_secs(60);
    let hog = loop {
        assert!(
            get(port, "/health").is_some(),
            "/health stopped answering: {}",
            s.log()
        );
        let runs = s.runs("hog").await;
        if let Some(done) = runs.iter().find(|r| r.status != RunStatus::Running) {
            break done.clone();
        }
        assert!(Instant::now() < deadline, "the hog never ended: {runs:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(hog.status, RunStatus::Error, "{hog:#?}");
    // Half of 512 for guests, two runs at a time.
    assert!(
        hog.error.as_deref().unwrap().starts_with("held 128 files"),
        "{hog:#?}"
    );
    assert!(
        hog.output.as_deref().unwrap().contains("RLIMIT_NOFILE"),
        "{hog:#?}"
    );
    let (from, to) = (hog.started_at, hog.completed_at.unwrap());
    wait_for_runs(
        &s,
        "tick",
        "a run of another task while the hog held its files",
        |r| {
            r.iter()
                .any(|r| r.status == RunStatus::Success && r.started_at > from && r.started_at < to)
        },
    )
    .await;
    signal(&child, "-TERM");
    assert!(until_exit(&mut child).success(), "{}", s.log());
}

#[tokio::test]
async fn a_slow_first_compile_keeps_health_up_and_stops_with_the_service() {
    let s = Service::new();
    s.task("canary", "noop", "");
    // Compiled at start (nothing cached yet), under bounds generous enough
    // that it is still compiling when the test is done.
    std::fs::write(
        s.tasks.join("bomb.wasm"),
        housekeeper_tests::compile_bomb(1_000_000),
    )
    .unwrap();
    let (mut child, port) = s.spawn(
        s.command()
            .env("HOUSEKEEPER_COMPILE_TIMEOUT", "1h")
            .env("HOUSEKEEPER_COMPILE_MEMORY", "16GiB"),
    );
    // Health answers while the first load is under way; readiness says why
    // the service is not ready yet.
    wait_for("/ready to say the tasks are loading", || {
        get(port, "/ready").is_some_and(|(status, body)| {
            status == 503 && body.contains("loading the tasks directory")
        })
    });
    let (status, body) = get(port, "/health").unwrap();
    assert_eq!(status, 200, "{body}");
    // Shutting down drops the load; the compile worker goes with the service.
    let worker = || {
        let out = Command::new("pgrep")
            .args(["-P", &child.id().to_string()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    wait_for("the compile worker", || !worker().is_empty());
    let worker_pid = worker();
    signal(&child, "-TERM");
    assert!(child.wait().unwrap().success(), "{}", s.log());
    wait_for("the compile worker to end", || {
        !std::path::Path::new(&format!("/proc/{worker_pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{worker_pid}/stat"))
                .is_ok_and(|stat| stat.contains(") Z "))
    });
}

#[tokio::test]
async fn a_slow_compile_on_reload_delays_only_its_own_task() {
    let s = Service::new();
    s.task("canary", "noop", "schedule = \"* * * * * *\"\n");
    let (mut child, port) = s.start(&[
        ("HOUSEKEEPER_COMPILE_TIMEOUT", "1h"),
        ("HOUSEKEEPER_COMPILE_MEMORY", "16GiB"),
    ]);
    let workers = || {
        let out = Command::new("pgrep")
            .args(["-P", &child.id().to_string(), "-f", "__compile"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    drop_file(
        &s.tasks,
        "bomb.wasm",
        &housekeeper_tests::compile_bomb(1_000_000),
    );
    wait_for("the bomb's compile to start", || workers() == 1);
    // Dropped while the bomb compiles: it is loaded and scheduled anyway.
    drop_file(&s.tasks, "late.toml", b"schedule = \"* * * * * *\"\n");
    drop_file(
        &s.tasks,
        "late.wasm",
        &std::fs::read(fixture_path("noop")).unwrap(),
    );
    wait_for("the late task", || !api_task(port, "late").is_null());
    wait_for_runs(&s, "late", "a run of the late task", |r| {
        r.iter().any(|r| r.status == RunStatus::Success)
    })
    .await;
    // The bomb is still compiling, once: later rescans did not start it again.
    assert_eq!(workers(), 1, "{}", s.log());
    assert!(api_task(port, "bomb").is_null());
    signal(&child, "-TERM");
    assert!(child.wait().unwrap().success(), "{}", s.log());
}

//! Several replicas of the real binary on one PostgreSQL database (each test
//! its own): every occurrence recorded and run once, no overlap across
//! replicas, toggles and cancels that cross replicas, failover after
//! kill -9, and a replica whose clock is an hour off.
//!
//! Runs leave evidence through the `witness` fixture: a file per run in a
//! directory all replicas share, named by occurrence and run id, so a test
//! counts what really ran, not only what the ledger says; a run of an
//! `exclusive` witness fails if another run of it is under way anywhere.

use chrono::{DateTime, Duration as Span, Utc};
use housekeeper::model::{RunStatus, Trigger};
use housekeeper::store::{RunRecord, Store};
use housekeeper_tests::{
    KillOnDrop, binary, database_url, fixture_path, http, http_json, listening_port,
};
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// libfaketime, which shifts a process's wall clock (not its monotonic
/// one). Debian's `faketime` package; `scripts/system-deps.sh` installs it.
fn libfaketime() -> PathBuf {
    let candidates = ["/usr/lib/faketime", "/usr/local/lib/faketime"]
        .into_iter()
        .map(PathBuf::from)
        .chain(
            std::fs::read_dir("/usr/lib")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("faketime")),
        );
    for dir in candidates {
        let lib = dir.join("libfaketimeMT.so.1");
        if lib.is_file() {
            return lib;
        }
    }
    panic!(
        "libfaketime is missing: run scripts/system-deps.sh (or apt-get install faketime) to test a replica whose clock is off"
    );
}

/// The environment that sets a replica's wall clock `offset` (`-1h`) off.
fn clock_off(offset: &str) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), libfaketime().display().to_string()),
        ("FAKETIME".into(), offset.into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

struct Replica {
    process: KillOnDrop,
    port: u16,
    log: PathBuf,
}

/// Replicas of `housekeeper serve` sharing one tasks directory and one
/// database; each has its own data directory and log. Dropping it kills
/// the ones still running.
struct Cluster {
    dir: tempfile::TempDir,
    url: String,
    replicas: BTreeMap<String, Replica>,
}

impl Cluster {
    /// Replicas to start on the database at `url`.
    fn new(url: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tasks.d")).unwrap();
        Cluster {
            dir,
            url: url.to_owned(),
            replicas: BTreeMap::new(),
        }
    }

    /// A directory every replica's runs of a task may write to.
    fn shared_dir(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join("shared").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Task `name`: the witness fixture with `manifest`, granted
    /// `shared_dir(name)` as `/witness` (which `[config] dir` names).
    fn witness(&self, name: &str, manifest: &str, config: &str) -> PathBuf {
        let shared = self.shared_dir(name);
        let tasks = self.dir.path().join("tasks.d");
        std::fs::copy(fixture_path("witness"), tasks.join(format!("{name}.wasm"))).unwrap();
        let manifest = format!(
            "{manifest}\n[[grants.dirs]]\nhost = \"{}\"\nguest = \"/witness\"\nmode = \"rw\"\n\n[config]\ndir = \"/witness\"\n{config}\n",
            shared.display()
        );
        std::fs::write(tasks.join(format!("{name}.toml")), manifest).unwrap();
        shared
    }

    /// Starts the named replicas at once, each with its extra environment,
    /// and waits until every one is ready.
    fn start(&mut self, replicas: &[(&str, Vec<(String, String)>)]) {
        let mut started = Vec::new();
        for (name, env) in replicas {
            let data = self.dir.path().join(format!("data-{name}"));
            std::fs::create_dir_all(&data).unwrap();
            let log = self.dir.path().join(format!("{name}.log"));
            let stderr = std::fs::File::create(&log).unwrap();
            let mut cmd = Command::new(binary());
            cmd.arg("serve")
                .env_remove("DB_HOST")
                .env("DATABASE_URL", &self.url)
                .env("HOST", "127.0.0.1")
                .env("PORT", "0")
                .env("HOUSEKEEPER_TASKS_DIR", self.dir.path().join("tasks.d"))
                .env("HOUSEKEEPER_DATA_DIR", &data)
                .env("HOUSEKEEPER_REPLICA", name)
                .env("LOG_LEVEL", "info")
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::null())
                // A file, not a pipe nobody drains.
                .stderr(stderr);
            started.push((name.to_string(), KillOnDrop(cmd.spawn().unwrap()), log));
        }
        for (name, mut process, log) in started {
            let port = listening_port(&mut process.0, &log, 0);
            self.replicas.insert(name, Replica { process, port, log });
        }
        for (name, r) in &mut self.replicas {
            housekeeper_tests::wait_until(
                &format!("replica {name} to be ready"),
                Duration::from_secs(60),
                || {
                    if let Some(status) = r.process.0.try_wait().unwrap() {
                        panic!(
                            "replica {name} exited with {status}: {}",
                            std::fs::read_to_string(&r.log).unwrap_or_default()
                        );
                    }
                    http(r.port, "GET", "/ready", None).is_some_and(|(status, _)| status == 200)
                },
            );
        }
    }

    fn port(&self, name: &str) -> u16 {
        self.replicas[name].port
    }

    /// kill -9.
    fn kill(&mut self, name: &str) {
        let r = self.replicas.get_mut(name).unwrap();
        r.process.0.kill().unwrap();
        r.process.0.wait().unwrap();
    }

    /// SIGTERM to every replica still running, then waits for each to exit
    /// cleanly.
    fn stop(&mut self) {
        let mut running = Vec::new();
        for (name, r) in &mut self.replicas {
            if r.process.0.try_wait().unwrap().is_none() {
                let pid = r.process.0.id().to_string();
                let sent = Command::new("kill").args(["-TERM", &pid]).status();
                assert!(sent.unwrap().success());
                running.push(name.clone());
            }
        }
        for name in running {
            let r = self.replicas.get_mut(&name).unwrap();
            let status = r.process.0.wait().unwrap();
            assert!(
                status.success(),
                "replica {name}: {status}\n{}",
                std::fs::read_to_string(&r.log).unwrap_or_default()
            );
        }
    }

    fn log_of(&self, name: &str) -> String {
        std::fs::read_to_string(&self.replicas[name].log).unwrap_or_default()
    }

    /// Every replica's log, for failure messages.
    fn logs(&self) -> String {
        self.replicas
            .keys()
            .map(|name| format!("--- {name}\n{}", self.log_of(name)))
            .collect()
    }

    fn get_json(&self, replica: &str, path: &str) -> serde_json::Value {
        let (status, body) = http(self.port(replica), "GET", path, None)
            .unwrap_or_else(|| panic!("replica {replica} answers {path}"));
        assert_eq!(status, 200, "{path} on {replica}: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

async fn db_now(pool: &PgPool) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT now()")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// `t` rounded up to a whole second.
fn whole_second_after(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp() + 1, 0).unwrap()
}

/// Every run of `task`, oldest first.
async fn runs(pool: &PgPool, task: &str) -> Vec<RunRecord> {
    let mut runs = Store::from_postgres(pool.clone(), "observer")
        .runs(task, 100_000)
        .await
        .unwrap();
    runs.reverse();
    runs
}

/// Polls `check` on `task`'s runs every 100 ms until it gives a value;
/// fails after `bound` with the runs and the replicas' logs.
async fn eventually<T>(
    pool: &PgPool,
    cluster: &Cluster,
    task: &str,
    what: &str,
    bound: Duration,
    check: impl Fn(&[RunRecord]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + bound;
    loop {
        let runs = runs(pool, task).await;
        if let Some(found) = check(&runs) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} within {bound:?}: {runs:#?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The runs the witness fixture recorded in `dir`: (occurrence in ms, run id).
fn witnessed(dir: &Path) -> BTreeSet<(i64, i64)> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let (at, id) = name.split_once('-')?;
            Some((at.parse().ok()?, id.parse().unwrap()))
        })
        .collect()
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Three replicas, one of them with its clock an hour behind, for a
/// minute: a task every second and a task every 5 s that runs for 7 s
/// (`overlap = skip`). Every occurrence of the minute has exactly one row,
/// run or skipped; every run recorded ran once and nothing ran unrecorded;
/// the slow task's runs never overlap; no row is an hour off; the status
/// shows the late replica's offset.
#[sqlx::test(migrations = false)]
async fn three_replicas_one_an_hour_behind_run_each_occurrence_once_without_overlap(pool: PgPool) {
    occurrences_case(&pool, &database_url(&pool)).await
}

/// The case above with replicas on the database at `url` (the test's own,
/// or the same behind a pooler); `pool` reaches it directly.
pub(crate) async fn occurrences_case(pool: &PgPool, url: &str) {
    let mut c = Cluster::new(url);
    let tick_dir = c.witness("tick", "schedule = \"* * * * * *\"", "");
    let slow_dir = c.witness(
        "slow",
        "schedule = \"*/5 * * * * *\"\noverlap = \"skip\"",
        "sleep_ms = 7000\nexclusive = true",
    );
    let begun = db_now(pool).await;
    c.start(&[("r0", vec![]), ("r1", vec![]), ("late", clock_off("-1h"))]);
    let from = whole_second_after(db_now(pool).await);
    let to = from + Span::seconds(60);
    tokio::time::sleep((to - db_now(pool).await).to_std().unwrap()).await;

    // The late replica reports its offset, and every replica lists all three.
    for replica in ["r0", "r1", "late"] {
        let status = c.get_json(replica, "/api/housekeeper/status");
        let offsets: BTreeMap<String, i64> = status["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["replica"].as_str().unwrap().to_owned(),
                    r["clockOffsetMs"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            offsets.keys().collect::<Vec<_>>(),
            ["late", "r0", "r1"],
            "{status}"
        );
        assert!((offsets["late"] + 3_600_000).abs() < 5_000, "{status}");
        assert!(offsets["r0"].abs() < 2_000, "{status}");
        assert!(offsets["r1"].abs() < 2_000, "{status}");
    }
    let (_, metrics) = http(c.port("late"), "GET", "/metrics", None).unwrap();
    let offset: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("housekeeper_clock_offset_seconds "))
        .unwrap_or_else(|| panic!("no clock offset metric: {metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!((offset + 3600.0).abs() < 5.0, "{offset}");

    // Every occurrence up to the end of the minute is recorded; then the
    // replicas stop (a run under way finishes first).
    for (task, every) in [("tick", 1), ("slow", 5)] {
        let last = DateTime::from_timestamp(to.timestamp() / every * every, 0).unwrap();
        eventually(
            pool,
            &c,
            task,
            "the minute's last occurrence",
            Duration::from_secs(30),
            |runs| {
                runs.iter()
                    .any(|r| r.scheduled_for == Some(last))
                    .then_some(())
            },
        )
        .await;
    }
    c.stop();
    let ended = db_now(pool).await;

    for (task, every, dir) in [("tick", 1, &tick_dir), ("slow", 5, &slow_dir)] {
        let runs = runs(pool, task).await;
        for r in &runs {
            assert_eq!(r.triggered_by, Trigger::Schedule, "{r:#?}");
            // No occurrence from a clock an hour off.
            let at = r.scheduled_for.unwrap();
            assert!(at >= begun - Span::seconds(1) && at <= ended, "{r:#?}");
            assert!(r.started_at >= begun && r.started_at <= ended, "{r:#?}");
            if r.status == RunStatus::Success {
                let done = r.completed_at.unwrap();
                assert!(r.started_at <= done && done <= ended, "{r:#?}");
            }
        }
        let window: Vec<&RunRecord> = runs
            .iter()
            .filter(|r| r.scheduled_for.is_some_and(|at| at >= from && at <= to))
            .collect();
        let mut seconds: Vec<i64> = window
            .iter()
            .map(|r| (r.scheduled_for.unwrap() - from).num_seconds())
            .collect();
        seconds.sort();
        let expected: Vec<i64> = (0..=60)
            .filter(|s| (from.timestamp() + s) % every == 0)
            .collect();
        assert_eq!(
            seconds, expected,
            "{task}: one row per occurrence\n{window:#?}"
        );
        for r in &window {
            match r.status {
                RunStatus::Success => {}
                RunStatus::Skipped => assert!(
                    r.error
                        .as_deref()
                        .unwrap_or_default()
                        .contains("still running"),
                    "{task}: skipped for another reason: {r:#?}"
                ),
                _ => panic!("{task}: {r:#?}\n{}", c.logs()),
            }
        }
        // What ran is what the ledger says ran, once each.
        let recorded: BTreeSet<(i64, i64)> = window
            .iter()
            .filter(|r| r.status == RunStatus::Success)
            .map(|r| (ms(r.scheduled_for.unwrap()), r.id))
            .collect();
        let ran: BTreeSet<(i64, i64)> = witnessed(dir)
            .into_iter()
            .filter(|(at, _)| *at >= ms(from) && *at <= ms(to))
            .collect();
        assert_eq!(ran, recorded, "{task}: the runs that happened");
    }

    // The slow task: 7 s runs every 5 s, so every other occurrence or so is
    // skipped because one is still running, on whichever replica; the runs
    // never overlap.
    let slow = runs(pool, "slow").await;
    let mut ran: Vec<&RunRecord> = slow
        .iter()
        .filter(|r| r.status == RunStatus::Success)
        .collect();
    ran.sort_by_key(|r| r.started_at);
    assert!(ran.len() >= 6, "{slow:#?}");
    for pair in ran.windows(2) {
        assert!(
            pair[0].completed_at.unwrap() <= pair[1].started_at,
            "two runs overlap: {pair:#?}"
        );
    }
    assert!(
        slow.iter()
            .filter(|r| r.scheduled_for.is_some_and(|at| at >= from && at <= to))
            .any(|r| r.status == RunStatus::Skipped),
        "{slow:#?}"
    );
}

/// A toggle on one replica stops the task's fires on every replica, and a
/// cancel sent to one replica stops a run another replica is running.
#[sqlx::test(migrations = false)]
async fn toggles_and_cancels_reach_every_replica(pool: PgPool) {
    controls_case(&pool, &database_url(&pool)).await
}

/// The case above with replicas on the database at `url` (the test's own,
/// or the same behind a pooler); `pool` reaches it directly.
pub(crate) async fn controls_case(pool: &PgPool, url: &str) {
    let mut c = Cluster::new(url);
    c.witness("tick", "schedule = \"* * * * * *\"", "");
    // Runs for two minutes unless stopped.
    c.witness("hold", "timeout = \"5m\"", "sleep_ms = 120000");
    c.start(&[("a", vec![]), ("b", vec![]), ("c", vec![])]);

    // A run of `hold` on b, cancelled through a.
    let (status, body) =
        http(c.port("b"), "POST", "/api/housekeeper/tasks/hold/run", None).unwrap();
    assert_eq!(status, 202, "{body}");
    let triggered: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = triggered["runId"].as_i64().expect("the run's id");
    let started = c.shared_dir("hold").join(format!("unscheduled-{id}"));
    housekeeper_tests::wait_until("the run to start", Duration::from_secs(30), || {
        started.exists()
    });
    // A manual run on c while b holds the task (overlap = skip): refused,
    // naming the replica, and recorded skipped.
    let (status, body) =
        http(c.port("c"), "POST", "/api/housekeeper/tasks/hold/run", None).unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("still running on replica b"), "{body}");
    let (status, body) = http(
        c.port("a"),
        "POST",
        &format!("/api/housekeeper/runs/{id}/cancel"),
        None,
    )
    .unwrap();
    assert_eq!(status, 202, "{body}");
    assert!(body.contains("replica b"), "{body}");

    // tick, disabled through a.
    eventually(
        pool,
        &c,
        "tick",
        "tick's runs",
        Duration::from_secs(30),
        |runs| {
            (runs
                .iter()
                .filter(|r| r.status == RunStatus::Success)
                .count()
                >= 3)
                .then_some(())
        },
    )
    .await;
    let (status, body) = http_json(
        c.port("a"),
        "PATCH",
        "/api/housekeeper/tasks/tick/toggle",
        None,
        r#"{"enabled": false}"#,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");

    let cancelled = eventually(
        pool,
        &c,
        "hold",
        "the run's end",
        Duration::from_secs(30),
        |runs| {
            runs.iter()
                .find(|r| r.id == id && r.status != RunStatus::Running)
                .cloned()
        },
    )
    .await;
    assert_eq!(cancelled.status, RunStatus::Cancelled, "{cancelled:#?}");
    assert_eq!(cancelled.replica, "b");
    assert_eq!(cancelled.error.as_deref(), Some("cancelled on request"));

    // Every replica sees tick disabled within a few heartbeats (one is 5 s)…
    let deadline = Instant::now() + Duration::from_secs(20);
    for replica in ["a", "b", "c"] {
        loop {
            let task = c.get_json(replica, "/api/housekeeper/tasks/tick");
            if task["enabled"] == false {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "tick is still enabled on {replica}: {task}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // …and from then on no replica fires it.
    let off = db_now(pool).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let late: Vec<RunRecord> = runs(pool, "tick")
        .await
        .into_iter()
        .filter(|r| r.scheduled_for.is_some_and(|at| at > off))
        .collect();
    assert!(late.is_empty(), "fired after the toggle: {late:#?}");
    c.stop();
}

/// kill -9 of the replica running the slow task: another replica records
/// the run `interrupted` within 20 s (the default 15 s lease), retries it
/// (`retries.max = 1`), and runs the next occurrences; until the lease
/// expires, the dead replica's run still keeps the task's others skipped.
#[sqlx::test(migrations = false)]
async fn a_killed_replicas_run_is_interrupted_and_the_task_fails_over(pool: PgPool) {
    failover_case(&pool, &database_url(&pool)).await
}

/// The case above with replicas on the database at `url` (the test's own,
/// or the same behind a pooler); `pool` reaches it directly.
pub(crate) async fn failover_case(pool: &PgPool, url: &str) {
    let mut c = Cluster::new(url);
    c.witness(
        "slow",
        "schedule = \"*/5 * * * * *\"\noverlap = \"skip\"\n[retries]\nmax = 1\nbackoff = \"1s\"",
        "sleep_ms = 7000",
    );
    c.start(&[("r0", vec![]), ("r1", vec![]), ("r2", vec![])]);
    let ready = db_now(pool).await;
    let victim = eventually(
        pool,
        &c,
        "slow",
        "a running run",
        Duration::from_secs(30),
        |runs| {
            runs.iter()
                .find(|r| r.status == RunStatus::Running && r.started_at > ready)
                .cloned()
        },
    )
    .await;
    assert_eq!(victim.triggered_by, Trigger::Schedule);
    c.kill(&victim.replica);
    let killed = Instant::now();

    let interrupted = eventually(
        pool,
        &c,
        "slow",
        "the run marked interrupted",
        Duration::from_secs(20),
        |runs| {
            runs.iter()
                .find(|r| r.id == victim.id && r.status != RunStatus::Running)
                .cloned()
        },
    )
    .await;
    assert!(killed.elapsed() <= Duration::from_secs(20));
    assert_eq!(
        interrupted.status,
        RunStatus::Interrupted,
        "{interrupted:#?}"
    );
    let why = format!(
        "replica {} stopped renewing the run's lease",
        victim.replica
    );
    assert!(
        interrupted.error.as_deref().unwrap().contains(&why),
        "{interrupted:#?}"
    );

    let at = victim.scheduled_for.unwrap();
    let runs = eventually(
        pool,
        &c,
        "slow",
        "the retry and a later occurrence run elsewhere",
        Duration::from_secs(60),
        |runs| {
            // The retry runs, or is skipped if a later occurrence got there
            // first (overlap = skip).
            let retried = runs.iter().any(|r| {
                r.triggered_by == Trigger::Retry
                    && r.scheduled_for == Some(at)
                    && matches!(r.status, RunStatus::Success | RunStatus::Skipped)
            });
            let next = runs.iter().any(|r| {
                r.triggered_by == Trigger::Schedule
                    && r.scheduled_for.is_some_and(|s| s > at)
                    && r.status == RunStatus::Success
            });
            (retried && next).then(|| runs.to_vec())
        },
    )
    .await;
    c.stop();
    for r in runs.iter().filter(|r| r.started_at > victim.started_at) {
        assert_ne!(r.replica, victim.replica, "{r:#?}");
    }
    // The occurrence 5 s on was due while the dead replica's lease held.
    let next = runs
        .iter()
        .find(|r| r.scheduled_for == Some(at + Span::seconds(5)))
        .expect("the next occurrence is recorded");
    assert_eq!(next.status, RunStatus::Skipped, "{next:#?}");
    assert!(
        next.error
            .as_deref()
            .unwrap()
            .contains(&format!("still running on replica {}", victim.replica)),
        "{next:#?}"
    );
    let retries: Vec<&RunRecord> = runs
        .iter()
        .filter(|r| r.triggered_by == Trigger::Retry)
        .collect();
    assert_eq!(retries.len(), 1, "one retry, by one replica: {runs:#?}");
}

/// Three-second leases, so that a replica that dies is reaped, and its
/// retries taken over, within seconds.
fn short_lease() -> Vec<(String, String)> {
    vec![("HOUSEKEEPER_LEASE".into(), "3s".into())]
}

/// A manual run of `task` on replica r0, which fails (the witness's
/// `fail_once`): the failed run, once it is recorded.
async fn fails_once_on_r0(pool: &PgPool, c: &Cluster, task: &str) -> RunRecord {
    let path = format!("/api/housekeeper/tasks/{task}/run");
    let (status, body) = http(c.port("r0"), "POST", &path, None).unwrap();
    assert_eq!(status, 202, "{body}");
    eventually(
        pool,
        c,
        task,
        "the failed first run",
        Duration::from_secs(30),
        |runs| runs.iter().find(|r| r.status == RunStatus::Error).cloned(),
    )
    .await
}

/// A retry waiting out its backoff is on record, not only in its replica's
/// memory: kill -9 of that replica during the backoff, and another replica
/// runs the retry when it is due, once.
#[sqlx::test(migrations = false)]
async fn a_retry_outlives_the_replica_that_planned_it(pool: PgPool) {
    let mut c = Cluster::new(&database_url(&pool));
    c.witness(
        "flaky",
        "[retries]\nmax = 2\nbackoff = \"4s\"",
        "fail_once = true",
    );
    c.start(&[("r0", short_lease()), ("r1", short_lease())]);
    let failed = fails_once_on_r0(&pool, &c, "flaky").await;
    assert_eq!(failed.replica, "r0");
    let planned: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM housekeeper_retries")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(planned, 1, "the retry is on record before its backoff");
    c.kill("r0");

    let runs = eventually(
        &pool,
        &c,
        "flaky",
        "the retry run by r1",
        Duration::from_secs(30),
        |runs| {
            runs.iter()
                .any(|r| r.triggered_by == Trigger::Retry && r.status == RunStatus::Success)
                .then(|| runs.to_vec())
        },
    )
    .await;
    c.stop();
    let retries: Vec<&RunRecord> = runs
        .iter()
        .filter(|r| r.triggered_by == Trigger::Retry)
        .collect();
    assert_eq!(retries.len(), 1, "{runs:#?}");
    assert_eq!(retries[0].replica, "r1");
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM housekeeper_retries")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

/// With `overlap = replace`, a retry is of an older fire: when it comes due
/// while a newer run holds the task on another replica, it is recorded
/// skipped and the newer run goes on.
#[sqlx::test(migrations = false)]
async fn a_retry_never_replaces_a_newer_run(pool: PgPool) {
    let mut c = Cluster::new(&database_url(&pool));
    c.witness(
        "fresh",
        "overlap = \"replace\"\n[retries]\nmax = 1\nbackoff = \"3s\"",
        "fail_once = true\nsleep_ms = 8000",
    );
    c.start(&[("r0", short_lease()), ("r1", short_lease())]);
    fails_once_on_r0(&pool, &c, "fresh").await;
    // The newer run, on r1, while r0's retry waits out its backoff.
    let (status, body) = http(
        c.port("r1"),
        "POST",
        "/api/housekeeper/tasks/fresh/run",
        None,
    )
    .unwrap();
    assert_eq!(status, 202, "{body}");
    let newer = serde_json::from_str::<serde_json::Value>(&body).unwrap()["runId"]
        .as_i64()
        .expect("the newer run's id");
    let runs = eventually(
        &pool,
        &c,
        "fresh",
        "the newer run's end",
        Duration::from_secs(30),
        |runs| {
            runs.iter()
                .any(|r| r.id == newer && r.status != RunStatus::Running)
                .then(|| runs.to_vec())
        },
    )
    .await;
    c.stop();
    let newer = runs.iter().find(|r| r.id == newer).unwrap();
    assert_eq!(newer.status, RunStatus::Success, "{runs:#?}");
    let retry: Vec<&RunRecord> = runs
        .iter()
        .filter(|r| r.triggered_by == Trigger::Retry)
        .collect();
    assert_eq!(retry.len(), 1, "{runs:#?}");
    assert_eq!(retry[0].status, RunStatus::Skipped, "{runs:#?}");
    assert!(
        retry[0]
            .error
            .as_deref()
            .unwrap()
            .contains("still running on replica r1"),
        "{runs:#?}"
    );
}

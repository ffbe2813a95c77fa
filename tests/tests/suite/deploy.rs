//! The example manifests in deploy/tasks/ with the bundled components,
//! through the real binary: they all check, and they run against the
//! example schema on the database that `DATABASE_URL` or
//! `HOUSEKEEPER_DB_<NAME>_URL` names.

use housekeeper_tests::{EXAMPLE_SCHEMA, KillOnDrop, binary, target_dir};
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn deploy_tasks() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/tasks")
}

/// A tasks directory with every example manifest and bundled component.
fn tasks_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(deploy_tasks()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    for entry in std::fs::read_dir(target_dir().join("tasks")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    dir
}

fn housekeeper(args: &[&str], env: &[(&str, &str)]) -> Output {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("DB_HOST")
        .env_remove("LOG_LEVEL")
        .env("HOUSEKEEPER_DATA_DIR", data.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The URL of the test's own database.
async fn url_of(pool: &PgPool) -> String {
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .unwrap();
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL is set for #[sqlx::test]");
    let (server, _) = base.rsplit_once('/').unwrap();
    format!("{server}/{name}")
}

#[test]
fn every_example_manifest_checks() {
    let dir = tasks_dir();
    let o = housekeeper(&["check", dir.path().to_str().unwrap()], &[]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    for entry in std::fs::read_dir(deploy_tasks()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        assert!(
            out.contains(&format!("ok   {name}\n")),
            "{name} missing: {out}"
        );
    }
    // Verbs as the manifest writes them.
    assert!(
        out.contains("grants sql:   main.events [select, create_partition, drop_partition]\n"),
        "{out}"
    );
}

#[sqlx::test]
async fn example_tasks_run_on_the_main_and_on_a_named_connection(pool: PgPool) {
    sqlx::raw_sql(EXAMPLE_SCHEMA).execute(&pool).await.unwrap();
    let url = url_of(&pool).await;
    let dir = tasks_dir();
    let tasks = dir.path().to_str().unwrap();

    let o = housekeeper(
        &["run", "events-partition-maintenance", "--tasks-dir", tasks],
        &[
            ("DATABASE_URL", &url),
            ("HOUSEKEEPER_DB_MAIN_UNSAFE_SUPERUSER", "1"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("events: created 31, dropped 0"),
        "{}",
        text(&o)
    );
    let made: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(made, 32);

    // The same task on a connection named `app`; the run history stays in
    // the embedded store.
    let manifest = dir.path().join("device-metrics-partition-maintenance.toml");
    let text_of = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text_of.replace("connection = \"main\"", "connection = \"app\""),
    )
    .unwrap();
    let o = housekeeper(
        &[
            "run",
            "device-metrics-partition-maintenance",
            "--tasks-dir",
            tasks,
            "--dry-run",
        ],
        &[
            ("HOUSEKEEPER_DB_APP_URL", &url),
            ("HOUSEKEEPER_DB_APP_UNSAFE_SUPERUSER", "1"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("device_metrics: would create 4, would detach 0"),
        "{}",
        text(&o)
    );
    // The same connection from a connections file.
    let file = dir.path().join("connections.conf");
    std::fs::write(
        &file,
        format!("[connections.app]\nurl = \"{url}\"\nunsafe_superuser = true\n"),
    )
    .unwrap();
    let o = housekeeper(
        &[
            "run",
            "device-metrics-partition-maintenance",
            "--tasks-dir",
            tasks,
            "--dry-run",
        ],
        &[("HOUSEKEEPER_DB_CONFIG", file.to_str().unwrap())],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("device_metrics: would create 4"),
        "{}",
        text(&o)
    );

    let o = housekeeper(
        &[
            "run",
            "device-metrics-partition-maintenance",
            "--tasks-dir",
            tasks,
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("HOUSEKEEPER_DB_APP_URL"), "{}", text(&o));

    let o = housekeeper(
        &["run", "events-partition-maintenance", "--tasks-dir", tasks],
        &[("HOUSEKEEPER_DB_APP_URL", "mysql://nope")],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("HOUSEKEEPER_DB_APP_URL"), "{}", text(&o));
}

#[sqlx::test]
async fn a_call_past_the_per_call_cap_is_an_error_the_task_sees(pool: PgPool) {
    sqlx::raw_sql(EXAMPLE_SCHEMA).execute(&pool).await.unwrap();
    let url = url_of(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        housekeeper_tests::fixture_path("hostile"),
        dir.path().join("hostile.wasm"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("hostile.toml"),
        "timeout = \"30s\"\n[grants.database]\ntables = { events = [\"select\"] }\n[config]\nmode = \"sql-query\"\nsql = \"SELECT count(*) FROM generate_series(1, 100000000000) AS g\"\n",
    )
    .unwrap();
    let o = housekeeper(
        &[
            "run",
            "hostile",
            "--tasks-dir",
            dir.path().to_str().unwrap(),
        ],
        &[
            ("DATABASE_URL", &url),
            ("HOUSEKEEPER_DB_MAIN_UNSAFE_SUPERUSER", "1"),
            ("HOUSEKEEPER_SQL_CALL_TIMEOUT", "1s"),
        ],
    );
    // The task got `timeout` and failed with it; the run had time left.
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("sql: the statement timed out"),
        "{}",
        text(&o)
    );
}

/// `serve` reaches task databases the same way: a startup run of the example
/// partition task on connection `app` keeps `events` ready, while the run
/// history stays in the embedded store.
#[sqlx::test]
async fn serve_runs_database_tasks_on_named_connections(pool: PgPool) {
    sqlx::raw_sql(EXAMPLE_SCHEMA).execute(&pool).await.unwrap();
    let url = url_of(&pool).await;
    let dir = tasks_dir();
    let manifest = dir.path().join("events-partition-maintenance.toml");
    let text_of = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text_of.replace("connection = \"main\"", "connection = \"app\""),
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(data.path().join("serve.log")).unwrap();
    let child = Command::new(binary())
        .arg("serve")
        .env_remove("DATABASE_URL")
        .env_remove("DB_HOST")
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("HOUSEKEEPER_TASKS_DIR", dir.path())
        .env("HOUSEKEEPER_DATA_DIR", data.path())
        .env("HOUSEKEEPER_DB_APP_URL", &url)
        .env("HOUSEKEEPER_DB_APP_UNSAFE_SUPERUSER", "1")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let _child = KillOnDrop(child);

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let made: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if made == 32 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "events has {made} partitions; log: {}",
            std::fs::read_to_string(data.path().join("serve.log")).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // No run history went into the application database.
    let history: bool = sqlx::query_scalar("SELECT to_regclass('housekeeper_runs') IS NOT NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!history);
}

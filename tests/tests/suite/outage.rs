//! A database that is away: `serve` waits for it instead of failing, and
//! answers `/health` meanwhile; a database that refuses still stops it. A
//! replica name another live process reports under: `serve` waits for it
//! before it takes any run.

use housekeeper::model::RunStatus;
use housekeeper::store::Store;
use housekeeper_tests::{Server, fixture_path, http, serve_args, wait_until, wait_until_async};
use sqlx::PgPool;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// Forwards every connection `gate` accepts to the local PostgreSQL.
fn open_the_gate(gate: TcpListener) {
    std::thread::spawn(move || {
        for client in gate.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect("127.0.0.1:5432") else {
                continue;
            };
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
}

#[sqlx::test(migrations = false)]
async fn serve_waits_for_its_database_and_answers_health_meanwhile(pool: PgPool) {
    let database = pool.connect_options().get_database().unwrap().to_owned();
    // Bound but not accepting: a database that does not answer.
    let gate = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = gate.local_addr().unwrap().port();
    let (tasks, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut args = serve_args(tasks.path(), data.path());
    args.db.database_url = Some(format!("postgres://postgres@127.0.0.1:{port}/{database}"));
    args.db.db_connect_timeout = 300;
    let server = Server::launch(args);
    let get = |path: &str| http(server.port(), "GET", path, None);

    wait_until("/health to answer", Duration::from_secs(30), || {
        get("/health").is_some()
    });
    let (status, body) = get("/health").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("starting") && body.contains("waiting for the database"),
        "{body}"
    );
    let (status, body) = get("/ready").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("waiting for the database"), "{body}");
    let (status, body) = get("/api/housekeeper/tasks").unwrap();
    assert_eq!(status, 503, "{body}");
    // Several connection attempts later it is still waiting, not stopped.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !server.finished(),
        "serve gave up on a database that did not answer"
    );

    open_the_gate(gate);
    wait_until("the service to be ready", Duration::from_secs(60), || {
        get("/ready").is_some_and(|(status, _)| status == 200)
    });
    let (status, body) = get("/api/housekeeper/status").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"database\":\"postgres\""), "{body}");
    server.stop().unwrap();
}

#[test]
fn serve_stops_on_a_database_that_refuses() {
    let (tasks, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut args = serve_args(tasks.path(), data.path());
    args.db.database_url =
        Some("postgres://postgres@127.0.0.1:5432/housekeeper_no_such_database".into());
    let server = Server::launch(args);
    wait_until("serve to stop", Duration::from_secs(30), || {
        server.finished()
    });
    let e = format!("{:#}", server.stop().unwrap_err());
    assert!(e.contains("housekeeper_no_such_database"), "{e}");
}

/// `http` off the test's runtime, which keeps running meanwhile.
async fn http_off(port: u16, method: &'static str, path: &'static str) -> Option<(u16, String)> {
    tokio::task::spawn_blocking(move || http(port, method, path, None))
        .await
        .unwrap()
}

/// Waits until `/ready` answers as `wanted` says.
async fn wait_for_ready(port: u16, what: &str, wanted: impl Fn(u16, &str) -> bool) {
    wait_until_async(what, Duration::from_secs(30), async || {
        http_off(port, "GET", "/ready")
            .await
            .is_some_and(|(status, body)| wanted(status, &body))
    })
    .await;
}

/// While another process reports under its replica name, `serve` waits,
/// saying so, and takes no run (`/ready` and the API answer 503): a run it
/// took would be taken for one the other process left, and closed as
/// interrupted when the wait ends. Once the name is free it starts, and its
/// runs are its own.
#[sqlx::test(migrations = "../migrations/postgres")]
async fn a_replica_waits_for_its_name_before_it_takes_runs(pool: PgPool) {
    let (tasks, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::copy(fixture_path("witness"), tasks.path().join("t.wasm")).unwrap();
    std::fs::write(tasks.path().join("t.toml"), "").unwrap();
    let mut args = serve_args(tasks.path(), data.path());
    args.db.database_url = Some(housekeeper_tests::database_url(&pool));
    args.db.lease = Duration::from_secs(3);
    let name = args.db.replica.clone().unwrap();

    // The other process keeps reporting until the test has seen the wait.
    let other = Store::from_postgres(pool.clone(), &name);
    let alive = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reporting = {
        let alive = alive.clone();
        tokio::spawn(async move {
            let started = chrono::Utc::now();
            while alive.load(std::sync::atomic::Ordering::SeqCst) {
                other.replica_heartbeat(started, "0", 0).await.unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server = Server::launch(args);
    let port = server.port();
    wait_for_ready(port, "a wait for the replica's name", |status, body| {
        status == 503 && body.contains("replica's name")
    })
    .await;
    let (status, body) = http_off(port, "POST", "/api/housekeeper/tasks/t/run")
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");
    alive.store(false, std::sync::atomic::Ordering::SeqCst);
    reporting.await.unwrap();

    wait_for_ready(port, "ready once the name is free", |status, _| {
        status == 200
    })
    .await;
    let (status, body) = http_off(port, "POST", "/api/housekeeper/tasks/t/run")
        .await
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["runId"]
        .as_i64()
        .expect("the run's id");
    let store = Store::from_postgres(pool.clone(), "observer");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let run = loop {
        let run = store.run(id).await.unwrap().unwrap();
        if run.status != RunStatus::Running {
            break run;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run did not end: {run:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(run.status, RunStatus::Success, "{run:#?}");
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap()
        .unwrap();
}

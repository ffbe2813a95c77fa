//! A database that is away: `serve` waits for it instead of failing, and
//! answers `/health` meanwhile; a database that refuses still stops it.

use housekeeper_tests::{Server, http, serve_args, wait_until};
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

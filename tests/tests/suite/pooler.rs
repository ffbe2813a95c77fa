//! The store behind PgBouncer in transaction mode, where consecutive
//! transactions of one client connection may run on different server
//! sessions: the replica cases of `replicas` through a private pgbouncer,
//! several stores migrating one fresh database at once, two real
//! `housekeeper serve` replicas running a task every second, and the
//! multi-process cases of `cluster`.

use super::{cluster, replicas};
use chrono::{DateTime, Utc};
use housekeeper::model::{RunStatus, Trigger};
use housekeeper::store::{Store, StoreOptions};
use housekeeper_tests::{KillOnDrop, binary, fixture_path, listening_port, wait_until};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

/// A pgbouncer of this test's own, in transaction mode, in front of the
/// PostgreSQL server of `DATABASE_URL`, every database by its own name.
/// Killed when dropped.
pub(crate) struct PgBouncer {
    port: u16,
    user: String,
    dir: tempfile::TempDir,
    _process: KillOnDrop,
}

/// Server sessions per database: fewer than the clients of one store, so
/// that they take turns on the same sessions. They are handed out in turn
/// (`server_round_robin`), not the last one freed first, so that two
/// transactions of one client rarely get the same one: what a store left on
/// a session would not go unnoticed.
const SERVER_SESSIONS: u32 = 3;

impl PgBouncer {
    pub(crate) fn start() -> PgBouncer {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let server = PgConnectOptions::from_str(&url).expect("DATABASE_URL parses");
        let program = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .or_else(|| which("pgbouncer"))
            .expect(
                "pgbouncer is missing: scripts/system-deps.sh installs it \
                 (on Debian or Ubuntu: sudo apt-get install pgbouncer)",
            );
        let dir = tempfile::tempdir().unwrap();
        let user = server.get_username().to_owned();
        // Trust towards its clients; towards the server, the password of
        // DATABASE_URL, if it has one.
        let password = password(&url);
        std::fs::write(
            dir.path().join("users.txt"),
            format!("\"{user}\" \"{password}\"\n"),
        )
        .unwrap();
        let log = dir.path().join("pgbouncer.log");
        // pgbouncer refuses to run as root: as root, it is told to switch
        // to an unprivileged user, which must be able to read its files.
        let root = rustix::process::geteuid().is_root();
        if root {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        // The port is one that was free a moment ago; should another process
        // take it first, pgbouncer exits and the next one is tried.
        for _ in 0..5 {
            let port = free_port();
            let ini = dir.path().join("pgbouncer.ini");
            std::fs::write(
                &ini,
                format!(
                    "[databases]\n\
                     * = host={host} port={server_port}\n\
                     [pgbouncer]\n\
                     listen_addr = 127.0.0.1\n\
                     listen_port = {port}\n\
                     unix_socket_dir =\n\
                     auth_type = trust\n\
                     auth_file = {users}\n\
                     pool_mode = transaction\n\
                     default_pool_size = {SERVER_SESSIONS}\n\
                     server_round_robin = 1\n\
                     max_client_conn = 500\n\
                     logfile = {log}\n\
                     pidfile =\n",
                    host = server.get_host(),
                    server_port = server.get_port(),
                    users = dir.path().join("users.txt").display(),
                    log = log.display(),
                ),
            )
            .unwrap();
            if root {
                use std::os::unix::fs::PermissionsExt;
                for file in [&ini, &dir.path().join("users.txt")] {
                    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
                }
                std::fs::write(&log, "").unwrap();
                std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
            }
            let mut cmd = Command::new(&program);
            if root {
                cmd.args(["-u", "nobody"]);
            }
            let mut process = KillOnDrop(
                cmd.arg(&ini)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("pgbouncer starts"),
            );
            let mut exited = false;
            wait_until("pgbouncer to listen", Duration::from_secs(10), || {
                exited = process.0.try_wait().unwrap().is_some();
                exited || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            if !exited {
                return PgBouncer {
                    port,
                    user,
                    dir,
                    _process: process,
                };
            }
        }
        panic!(
            "pgbouncer did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// The URL of `database` through this pgbouncer.
    pub(crate) fn url(&self, database: &str) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{database}",
            self.user, self.port
        )
    }

    /// What pgbouncer logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

/// The password part of a `postgres://user:password@…` URL, or "".
fn password(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split_once('@')
        .and_then(|(credentials, _)| credentials.split_once(':'))
        .map(|(_, password)| password.to_owned())
        .unwrap_or_default()
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn database(pool: &PgPool) -> String {
    pool.connect_options()
        .get_database()
        .expect("a test database")
        .to_owned()
}

/// Stores for replicas `a` and `b` on `pool`'s database through `bouncer`,
/// opened at once: both migrate the fresh database through the pooler.
async fn pair(bouncer: &PgBouncer, pool: &PgPool) -> (Store, Store) {
    let url = bouncer.url(&database(pool));
    let options = StoreOptions::default();
    let (a, b) = tokio::join!(
        Store::open(&url, "a", &options),
        Store::open(&url, "b", &options),
    );
    (a.unwrap(), b.unwrap())
}

macro_rules! through_pgbouncer {
    ($($name:ident),* $(,)?) => {
        $(
            #[sqlx::test(migrations = false)]
            async fn $name(pool: PgPool) {
                let bouncer = PgBouncer::start();
                let (a, b) = pair(&bouncer, &pool).await;
                // What the cases change behind the store's back (a lease's
                // expiry, a heartbeat's age) goes to the database directly.
                let exec = |sql: String, at: DateTime<Utc>| -> futures_util::future::BoxFuture<'_, ()> {
                    let pool = pool.clone();
                    Box::pin(async move {
                        sqlx::query(&sql).bind(at).execute(&pool).await.unwrap();
                    })
                };
                replicas::$name(a, b, &exec).await;
            }
        )*
    };
}

through_pgbouncer!(
    exclusive_case,
    reaped_case,
    cancel_case,
    startup_case,
    early_case,
    listed_case,
    retry_case,
);

#[sqlx::test(migrations = false)]
async fn concurrent_claims(pool: PgPool) {
    let bouncer = PgBouncer::start();
    let url = bouncer.url(&database(&pool));
    let store = async |replica: &str| {
        Store::open(&url, replica, &StoreOptions::default())
            .await
            .unwrap()
    };
    replicas::concurrent_claims_record_each_occurrence_once(store, &pool).await;
}

/// Replicas starting together on a fresh database through the pooler: one
/// applies the migrations, the others find them applied, and none waits on
/// a lock that a session it no longer has took; then again on the migrated
/// database.
#[sqlx::test(migrations = false)]
async fn replicas_starting_together_migrate_once(pool: PgPool) {
    let bouncer = PgBouncer::start();
    let url = bouncer.url(&database(&pool));
    for _ in 0..2 {
        let opened = futures_util::future::join_all((0..6).map(|i| {
            let url = url.clone();
            async move { Store::open(&url, &format!("r{i}"), &StoreOptions::default()).await }
        }));
        let opened = tokio::time::timeout(Duration::from_secs(60), opened)
            .await
            .expect("the stores open within a minute");
        for store in opened {
            let store = store.unwrap();
            store.ping().await.unwrap();
        }
    }
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        applied as usize,
        Store::postgres_migrator().iter().count(),
        "{}",
        bouncer.log()
    );
}

/// The real binary: two replicas on one database through the pooler, a
/// task every second for about 20 s. Every occurrence is one row, run by
/// one replica, and succeeded; neither log has an error or a warning.
#[sqlx::test(migrations = false)]
async fn two_replicas_serve_through_pgbouncer(pool: PgPool) {
    let bouncer = PgBouncer::start();
    let url = bouncer.url(&database(&pool));
    let tmp = tempfile::tempdir().unwrap();
    let tasks = tmp.path().join("tasks.d");
    std::fs::create_dir_all(&tasks).unwrap();
    std::fs::copy(fixture_path("noop"), tasks.join("tick.wasm")).unwrap();
    std::fs::write(tasks.join("tick.toml"), "schedule = \"* * * * * *\"\n").unwrap();

    let start = |replica: &str| -> (KillOnDrop, PathBuf) {
        let data = tmp.path().join(replica);
        std::fs::create_dir_all(&data).unwrap();
        let log = tmp.path().join(format!("{replica}.log"));
        let mut child = Command::new(binary())
            .arg("serve")
            .env_remove("DB_HOST")
            .env("DATABASE_URL", &url)
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("HOUSEKEEPER_TASKS_DIR", &tasks)
            .env("HOUSEKEEPER_DATA_DIR", &data)
            .env("HOUSEKEEPER_REPLICA", replica)
            .env("LOG_LEVEL", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        listening_port(&mut child, &log, 0);
        (KillOnDrop(child), log)
    };
    let (a, a_log) = start("a");
    let (b, b_log) = start("b");

    let store = Store::open(&url, "observer", &StoreOptions::default())
        .await
        .unwrap();
    let began = Utc::now();
    let mut by_replica = std::collections::BTreeMap::<String, usize>::new();
    let rows = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rows = store.runs("tick", 1000).await.unwrap();
        if (Utc::now() - began).num_seconds() >= 20 {
            break rows;
        }
    };
    drop((a, b));
    let logs = [&a_log, &b_log].map(|p| read(p));
    let scheduled: Vec<_> = rows
        .iter()
        .filter(|r| r.triggered_by == Trigger::Schedule)
        .collect();
    let mut occurrences: Vec<_> = scheduled.iter().map(|r| r.scheduled_for.unwrap()).collect();
    occurrences.sort();
    let count = occurrences.len();
    occurrences.dedup();
    assert_eq!(
        occurrences.len(),
        count,
        "one row per occurrence: {rows:#?}"
    );
    assert!(
        count >= 15,
        "{count} occurrences in 20 s: {rows:#?}\n{logs:?}"
    );
    // Every second from the first to the last occurrence is there.
    let span = (*occurrences.last().unwrap() - occurrences[0]).num_seconds() + 1;
    assert_eq!(
        span as usize, count,
        "no occurrence missed: {occurrences:?}"
    );
    for r in &scheduled {
        *by_replica.entry(r.replica.clone()).or_default() += 1;
        // The last one may have been cut short by the end of the test.
        if r.scheduled_for != occurrences.last().copied() {
            assert_eq!(r.status, RunStatus::Success, "{r:#?}");
        }
    }
    assert!(
        by_replica.keys().all(|k| k == "a" || k == "b"),
        "{by_replica:?}"
    );
    for (log, path) in logs.iter().zip([&a_log, &b_log]) {
        let bad: Vec<_> = log
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("WARN"))
            .collect();
        assert!(bad.is_empty(), "{}: {bad:#?}", path.display());
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The multi-process cases of `cluster`, their replicas on the database
/// through the pooler (the test reads it directly).
macro_rules! cluster_through_pgbouncer {
    ($($name:ident),* $(,)?) => {
        $(
            #[sqlx::test(migrations = false)]
            async fn $name(pool: PgPool) {
                let bouncer = PgBouncer::start();
                cluster::$name(&pool, &bouncer.url(&database(&pool))).await;
            }
        )*
    };
}

cluster_through_pgbouncer!(occurrences_case, controls_case, failover_case);

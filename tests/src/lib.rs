//! Helpers for the end-to-end tests: where the built components and the
//! binary are, one shared runtime with each component compiled once per
//! test process, and the service run in this process ([`Server`]) or as
//! the real binary ([`listening_port`]).

use housekeeper::config::ServeArgs;
use housekeeper::model::Trigger;
use housekeeper::runtime::{Runtime, RuntimeOptions, TaskComponent};
use housekeeper::store::{Claim, Lease, NewRun, Store};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The workspace's target directory (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
    }
}

fn built(kind: &str, name: &str) -> PathBuf {
    let path = target_dir().join(kind).join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: build the components first with scripts/build-tasks.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A bundled task, e.g. `cleanup-old-logs`.
pub fn task_path(name: &str) -> PathBuf {
    built("tasks", name)
}

/// A test-only component from `tasks/fixtures/`.
pub fn fixture_path(name: &str) -> PathBuf {
    built("fixtures", name)
}

/// The `housekeeper` binary of this build.
pub fn binary() -> PathBuf {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let path = target_dir().join(profile).join("housekeeper");
    assert!(
        path.is_file(),
        "{} is missing: build it first with `cargo build --workspace` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A run of `task` started by `trigger`: the first attempt, not a dry
/// run, not exclusive, no occurrence and no component hash. A case sets
/// what it needs with `NewRun { …, ..new_run(task, trigger) }`.
pub fn new_run(task: &str, trigger: Trigger) -> NewRun<'_> {
    NewRun {
        task_name: task,
        triggered_by: trigger,
        scheduled_for: None,
        dry_run: false,
        component_hash: None,
        exclusive: false,
        attempt: 0,
    }
}

/// Claims `run` in `store`, which must be won.
pub async fn won(store: &Store, run: &NewRun<'_>) -> Lease {
    match store.begin_run(run).await.unwrap() {
        Claim::Won(lease) => lease,
        other => panic!("{} was not claimed: {other:?}", run.task_name),
    }
}

/// One runtime for the whole test process.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::new(RuntimeOptions::default()).expect("runtime starts"))
}

/// `path` compiled once per test process.
pub fn component(path: &Path) -> TaskComponent {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, TaskComponent>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(c) = cache.lock().unwrap().get(path) {
        return c.clone();
    }
    let compiled = runtime()
        .load_file(path)
        .unwrap_or_else(|e| panic!("{} does not load: {e}", path.display()));
    cache
        .lock()
        .unwrap()
        .entry(path.to_owned())
        .or_insert(compiled)
        .clone()
}

/// The example application schema from `deploy/schema/example.sql`.
pub const EXAMPLE_SCHEMA: &str = include_str!("../../deploy/schema/example.sql");

/// A compile bomb: a component holding one core function of `depth` nested
/// `block`s. Small on disk, expensive for Cranelift (time and memory grow
/// with the nesting). Written out byte by byte: no text-format parser
/// recurses that deep.
pub fn compile_bomb(depth: usize) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    fn section(id: u8, content: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(content.len(), out);
        out.extend_from_slice(content);
    }
    let mut body = vec![0x00]; // no locals
    for _ in 0..depth {
        body.extend_from_slice(&[0x02, 0x40]); // block (empty type)
    }
    body.extend(std::iter::repeat_n(0x0b, depth + 1)); // end × depth, then the function's end
    let mut code = vec![0x01];
    leb(body.len(), &mut code);
    code.extend_from_slice(&body);

    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(0x01, &[0x01, 0x60, 0x00, 0x00], &mut module); // type: () -> ()
    section(0x03, &[0x01, 0x00], &mut module); // one function of type 0
    section(0x0a, &code, &mut module);

    let mut component = b"\0asm\x0d\0\x01\0".to_vec();
    section(0x01, &module, &mut component); // core module section
    component
}

/// Makes a special file (`kind`: FIFO, character or block device) at
/// `path`; devices need root.
pub fn mknod(path: &Path, kind: rustix::fs::FileType, major: u32, minor: u32) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        kind,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(major, minor),
    )
    .unwrap_or_else(|e| panic!("mknod {} (run the tests as root): {e}", path.display()));
}

/// The URL of the test's own database (`DATABASE_URL` names the server).
pub fn database_url(pool: &sqlx::PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL is set for #[sqlx::test]");
    let (base, query) = match base.split_once('?') {
        Some((b, q)) => (b.to_owned(), format!("?{q}")),
        None => (base, String::new()),
    };
    let (server, _) = base
        .rsplit_once('/')
        .expect("DATABASE_URL ends in a database name");
    let options = pool.connect_options();
    let name = options.get_database().expect("a test database name");
    format!("{server}/{name}{query}")
}

/// The hostile fixture on a runtime whose parse layer is off: statements
/// reach the database as written, so only the database's own checks (the
/// task's role, SQLite's authorizer) stand in the way.
pub fn unparsed() -> &'static (Runtime, TaskComponent) {
    static UNPARSED: OnceLock<(Runtime, TaskComponent)> = OnceLock::new();
    UNPARSED.get_or_init(|| {
        let runtime = Runtime::new(RuntimeOptions {
            sql: housekeeper::capabilities::sql::SqlLimits {
                skip_parse: true,
                ..Default::default()
            },
            ..RuntimeOptions::default()
        })
        .unwrap();
        let hostile = runtime.load_file(&fixture_path("hostile")).unwrap();
        (runtime, hostile)
    })
}

/// Runs each `(mode, statement)` of `cases` through the unparsed runtime
/// (`request` makes the run's request) and asserts the run failed without
/// the canary value `the-secret-row` anywhere in what it reported.
pub async fn assert_each_refused(
    cases: &[(&str, String)],
    request: impl Fn(&str, &str) -> housekeeper::runtime::RunRequest,
) {
    let (runtime, hostile) = unparsed();
    for (mode, statement) in cases {
        let result = runtime.run(hostile, request(mode, statement)).await;
        let everything = format!("{:?} {:?} {}", result.summary, result.error, result.output);
        assert_eq!(
            result.status,
            housekeeper::model::RunStatus::Error,
            "{statement}: {result:#?}"
        );
        assert!(
            !everything.contains("the-secret-row"),
            "{statement}: {everything}"
        );
    }
}

/// A FUSE filesystem at `at` whose daemon never reads a request: every
/// call that reaches it waits, as on a network filesystem whose server is
/// gone. Dropping it aborts the connection (the waiting calls fail) and
/// unmounts it.
pub struct HungFilesystem {
    fuse: Option<std::fs::File>,
    at: PathBuf,
}

impl HungFilesystem {
    pub fn mount(at: &Path) -> HungFilesystem {
        use std::os::fd::AsRawFd;
        let fuse = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .unwrap_or_else(|e| panic!("/dev/fuse (run the tests as root): {e}"));
        let data = std::ffi::CString::new(format!(
            "fd={},rootmode=40000,user_id=0,group_id=0",
            fuse.as_raw_fd()
        ))
        .unwrap();
        rustix::mount::mount(
            "hung",
            at,
            "fuse.hung",
            rustix::mount::MountFlags::empty(),
            data.as_c_str(),
        )
        .unwrap_or_else(|e| {
            panic!(
                "mount a FUSE filesystem at {} (run the tests as root): {e}",
                at.display()
            )
        });
        HungFilesystem {
            fuse: Some(fuse),
            at: at.to_owned(),
        }
    }
}

impl Drop for HungFilesystem {
    fn drop(&mut self) {
        // Closing the device aborts the connection: what waits on it fails.
        drop(self.fuse.take());
        let _ = rustix::mount::unmount(&self.at, rustix::mount::UnmountFlags::DETACH);
    }
}

/// A manual run of the `hostile` fixture as task `task`, with `[config]`
/// `mode` and `key` = `value`, and 30 s to run.
pub fn hostile_request(
    task: &str,
    mode: &str,
    key: &str,
    value: &str,
) -> housekeeper::runtime::RunRequest {
    use housekeeper::model::ConfigValue;
    let mut request = housekeeper::runtime::RunRequest::from_manifest(
        &housekeeper::manifest::Manifest::implicit(task, "hostile.wasm"),
        housekeeper::cli::new_run_id(),
        Trigger::Manual,
    );
    request.timeout = std::time::Duration::from_secs(30);
    request
        .config
        .insert("mode".into(), ConfigValue::Text(mode.into()));
    request
        .config
        .insert(key.into(), ConfigValue::Text(value.into()));
    request
}

/// A run of the `hostile` fixture as task `task`, granted `grants` on
/// connection `main` (which is `connection`), with `[config]` `mode` and
/// `sql`, and 30 s to run.
pub fn sql_request(
    task: &str,
    connection: housekeeper::capabilities::sql::Connection,
    mode: &str,
    sql: &str,
    grants: &[(&str, &[housekeeper::manifest::SqlVerb])],
) -> housekeeper::runtime::RunRequest {
    let mut request = hostile_request(task, mode, "sql", sql);
    request.database = Some(housekeeper::manifest::DatabaseGrant {
        connection: "main".into(),
        tables: grants
            .iter()
            .map(|(t, v)| (t.to_string(), v.to_vec()))
            .collect(),
    });
    request.connections =
        Some(housekeeper::capabilities::sql::Connections::from_connections([("main", connection)]));
    request
}

/// A child process killed (and reaped) when the test ends, however it ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `serve`'s configuration for a test: tasks from `tasks`, the embedded
/// SQLite store in `data`, replica `test-replica`, compile workers from the
/// built binary, every other value `serve`'s default. The defaults are
/// clap's with the environment left out: the test process's own
/// (`DATABASE_URL`, say) is not the service's.
pub fn serve_args(tasks: &Path, data: &Path) -> ServeArgs {
    use clap::{Args, FromArgMatches};
    let command =
        ServeArgs::augment_args(clap::Command::new("serve")).mut_args(|a| a.env(None::<&str>));
    let matches = command
        .try_get_matches_from(["serve"])
        .expect("serve's defaults parse");
    let mut args = ServeArgs::from_arg_matches(&matches).expect("serve's defaults parse");
    args.host = "127.0.0.1".into();
    args.tasks_dir = tasks.to_owned();
    args.db.database_url = Some(format!("sqlite:{}", data.join("housekeeper.db").display()));
    args.db.data_dir = data.to_owned();
    args.db.replica = Some("test-replica".into());
    args.compile.worker = Some(binary());
    args
}

/// The service run in this process by `server::run`, on a listener bound to
/// `127.0.0.1:0` (no port is picked in advance that another process could
/// take). It runs on a tokio runtime of its own thread, so a test may block
/// on it; dropping the handle, or [`Server::stop`], resolves its shutdown
/// future and waits for it to drain and return.
pub struct Server {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    /// Starts the service and waits until `/ready` says it is (store open,
    /// tasks loaded); panics with its error if it stops first.
    pub fn start(args: ServeArgs) -> Server {
        let mut server = Server::launch(args);
        let port = server.port;
        wait_until("the service to be ready", Duration::from_secs(60), || {
            if server.thread.as_ref().is_some_and(|t| t.is_finished()) {
                let result = server.thread.take().unwrap().join().unwrap();
                panic!("serve stopped before it was ready: {result:?}");
            }
            http(port, "GET", "/ready", None).is_some_and(|(status, _)| status == 200)
        });
        server
    }

    /// Starts the service and returns at once, ready or not.
    pub fn launch(args: ServeArgs) -> Server {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let result = runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let shutdown = async move {
                    // A dropped sender stops the service too.
                    let _ = stopped.await;
                };
                let no_reloads = futures_util::stream::pending();
                housekeeper::server::run(args, listener, shutdown, no_reloads).await
            });
            // As `main` does: a compile still under way does not hold the end.
            runtime.shutdown_background();
            result
        });
        Server {
            port,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Whether `server::run` has returned.
    pub fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Shuts the service down as SIGTERM would (no new runs, running ones
    /// get the grace period) and returns what `server::run` returned.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop_and_wait()
    }

    fn stop_and_wait(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the service's thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop_and_wait();
    }
}

/// One HTTP/1.1 request to `127.0.0.1:port` (with a bearer `token`, if
/// any): the status and body, or `None` when nothing answers.
pub fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    request(port, method, path, token, None)
}

/// [`http`] with a JSON body.
pub fn http_json(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Option<(u16, String)> {
    request(port, method, path, token, Some(body))
}

fn request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let mut headers = String::new();
    if let Some(t) = token {
        headers.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if body.is_some() {
        headers.push_str("Content-Type: application/json\r\n");
    }
    let body = body.unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// Polls `condition` every 50 ms until it holds; fails after `bound`.
pub fn wait_until(what: &str, bound: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`wait_until`] for a `condition` that awaits, sleeping on tokio's timer.
pub async fn wait_until_async(
    what: &str,
    bound: Duration,
    mut condition: impl AsyncFnMut() -> bool,
) {
    let deadline = Instant::now() + bound;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The port a `housekeeper serve` process started with `PORT=0` listens on,
/// read from the `listening` line of its log (`log`, where its stderr goes,
/// from byte `from`: what earlier processes wrote there is skipped); panics
/// with the log if the process exits first.
pub fn listening_port(child: &mut std::process::Child, log: &Path, from: usize) -> u16 {
    let mut port = None;
    wait_until("the service to listen", Duration::from_secs(60), || {
        let text = std::fs::read(log).unwrap_or_default();
        let text = String::from_utf8_lossy(text.get(from..).unwrap_or_default());
        port = text
            .lines()
            .map(strip_ansi)
            .filter(|line| line.contains("listening"))
            .find_map(|line| {
                let address = line.split("address=").nth(1)?.split_whitespace().next()?;
                address.parse::<std::net::SocketAddr>().ok()
            })
            .map(|address| address.port());
        if port.is_none()
            && let Some(status) = child.try_wait().unwrap()
        {
            panic!("serve exited with {status}: {text}");
        }
        port.is_some()
    });
    port.unwrap()
}

/// `line` without terminal colour sequences (`ESC [ … m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            out.push(c);
        }
    }
    out
}

/// The `p` quantile of sorted samples (benchmarks).
pub fn percentile(sorted: &[std::time::Duration], p: f64) -> std::time::Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Prints a benchmark line (p50, p99, how many samples) and returns p50.
pub fn report(name: &str, mut samples: Vec<std::time::Duration>) -> std::time::Duration {
    samples.sort();
    let p50 = percentile(&samples, 0.50);
    println!(
        "{name:<52} p50 {:>9.1} µs   p99 {:>9.1} µs   ({} samples)",
        p50.as_secs_f64() * 1e6,
        percentile(&samples, 0.99).as_secs_f64() * 1e6,
        samples.len()
    );
    p50
}

//! Hostile components against the real runtime: every attack is contained
//! and every limit ends the run with its own status.

use housekeeper::manifest::{DirGrant, DirMode, Manifest};
use housekeeper::model::{ConfigValue, RunResult, RunStatus, Trigger};
use housekeeper::runtime::{LoadError, RunRequest};
use housekeeper_tests::{component, fixture_path, hostile_request, mknod, runtime};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

fn request(mode: &str, path: &str, dirs: Vec<DirGrant>) -> RunRequest {
    let mut request = hostile_request("hostile", mode, "path", path);
    request.dirs = dirs;
    request
}

async fn hostile(request: RunRequest) -> RunResult {
    let c = component(&fixture_path("hostile"));
    runtime().run(&c, request).await
}

fn grant(host: &Path, guest: &str, mode: DirMode) -> Vec<DirGrant> {
    vec![DirGrant {
        host: host.to_owned(),
        guest: guest.into(),
        mode,
    }]
}

/// Nothing the guest obtained may surface anywhere in the result.
fn assert_contained(result: &RunResult, secret: &str) {
    assert_ne!(result.status, RunStatus::Success, "{result:#?}");
    let everything = format!("{:?} {:?} {}", result.summary, result.error, result.output);
    assert!(!everything.contains("ESCAPED"), "{result:#?}");
    assert!(!everything.contains(secret), "{result:#?}");
}

/// A host directory with `data/` (to grant), `secret.txt` beside it, and
/// `outside/secret.txt` elsewhere.
struct Tree {
    _tmp: tempfile::TempDir,
    data: std::path::PathBuf,
    root: std::path::PathBuf,
}

const SECRET: &str = "the-secret-outside-the-grant";

fn tree() -> Tree {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_owned();
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(root.join("outside")).unwrap();
    std::fs::write(root.join("secret.txt"), SECRET).unwrap();
    std::fs::write(root.join("outside/secret.txt"), SECRET).unwrap();
    std::fs::write(data.join("inside.txt"), "inside").unwrap();
    Tree {
        _tmp: tmp,
        data,
        root,
    }
}

#[tokio::test]
async fn an_infinite_loop_runs_out_of_fuel() {
    let mut req = request("spin", "", vec![]);
    req.fuel = 50_000_000;
    let result = hostile(req).await;
    assert_eq!(result.status, RunStatus::OutOfFuel, "{result:#?}");
    assert!(result.fuel_used >= 50_000_000 - 10_000, "{result:#?}");
}

#[tokio::test]
async fn an_infinite_loop_hits_the_deadline() {
    let mut req = request("spin", "", vec![]);
    req.fuel = u64::MAX / 2;
    req.timeout = Duration::from_millis(300);
    let result = hostile(req).await;
    assert_eq!(result.status, RunStatus::Timeout, "{result:#?}");
    assert!(result.error.unwrap().contains("deadline"));
}

#[tokio::test(flavor = "current_thread")]
async fn a_busy_guest_does_not_stall_the_async_runtime() {
    // On a single-threaded runtime, the ticker only advances if the spinning
    // guest yields.
    let ticks = Arc::new(AtomicU64::new(0));
    let counter = ticks.clone();
    let ticker = tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(5));
        loop {
            interval.tick().await;
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let mut req = request("spin", "", vec![]);
    req.fuel = u64::MAX / 2;
    req.timeout = Duration::from_millis(400);
    let before = ticks.load(Ordering::Relaxed);
    let result = hostile(req).await;
    let during = ticks.load(Ordering::Relaxed) - before;
    ticker.abort();
    assert_eq!(result.status, RunStatus::Timeout);
    assert!(
        during > 1,
        "the ticker ran {during} times while the guest spun"
    );
}

#[tokio::test]
async fn a_memory_bomb_is_capped() {
    let mut req = request("memory-bomb", "", vec![]);
    req.memory_bytes = 32 << 20;
    let result = hostile(req).await;
    assert_eq!(result.status, RunStatus::OutOfMemory, "{result:#?}");
}

#[tokio::test]
async fn deep_recursion_traps() {
    let result = hostile(request("recursion", "", vec![])).await;
    assert_eq!(result.status, RunStatus::Trapped, "{result:#?}");
    assert!(result.error.unwrap().contains("call stack exhausted"));
}

#[tokio::test]
async fn a_panic_traps_and_its_message_is_in_the_output() {
    let result = hostile(request("panic", "", vec![])).await;
    assert_eq!(result.status, RunStatus::Trapped, "{result:#?}");
    assert!(
        result.output.contains("panicked on purpose"),
        "{}",
        result.output
    );
}

#[tokio::test]
async fn a_task_error_is_an_error_not_a_trap() {
    let result = hostile(request("fail", "", vec![])).await;
    assert_eq!(result.status, RunStatus::Error);
    assert_eq!(result.error.as_deref(), Some("failed on purpose"));
    let result = hostile(request("no-such-mode", "", vec![])).await;
    assert_eq!(result.status, RunStatus::Error);
    assert!(result.error.unwrap().starts_with("invalid config:"));
}

#[tokio::test]
async fn a_describe_that_loops_is_stopped() {
    let c = component(&fixture_path("describe-loop"));
    let e = runtime().describe(&c).await.unwrap_err();
    assert!(
        matches!(e.status, RunStatus::OutOfFuel | RunStatus::Timeout),
        "{e}"
    );
}

#[tokio::test]
async fn etc_passwd_is_out_of_reach_without_grants() {
    let result = hostile(request("read", "/etc/passwd", vec![])).await;
    assert_eq!(result.status, RunStatus::Error);
    assert_contained(&result, "root:");
    let result = hostile(request("list", "/", vec![])).await;
    assert_contained(&result, "etc");
}

#[tokio::test]
async fn dot_dot_does_not_leave_a_preopen() {
    let t = tree();
    for path in [
        "/data/../secret.txt",
        "/data/../../../../etc/passwd",
        "/data/../outside/secret.txt",
    ] {
        let result = hostile(request("read", path, grant(&t.data, "/data", DirMode::Rw))).await;
        assert_contained(&result, SECRET);
        assert_contained(&result, "root:");
    }
    // The grant itself works, so the failures above are the sandbox's doing.
    let result = hostile(request(
        "read",
        "/data/inside.txt",
        grant(&t.data, "/data", DirMode::Ro),
    ))
    .await;
    assert!(result.summary.unwrap().contains("inside"));
}

#[tokio::test]
async fn absolute_paths_outside_the_grant_are_refused() {
    let t = tree();
    let secret = t.root.join("secret.txt").display().to_string();
    for path in ["/etc/passwd", secret.as_str()] {
        let result = hostile(request("read", path, grant(&t.data, "/data", DirMode::Rw))).await;
        assert_contained(&result, SECRET);
        assert_contained(&result, "root:");
    }
}

#[tokio::test]
async fn symlinks_pointing_outside_are_not_followed() {
    let t = tree();
    std::os::unix::fs::symlink(t.root.join("outside"), t.data.join("dir-link")).unwrap();
    std::os::unix::fs::symlink(t.root.join("secret.txt"), t.data.join("file-link")).unwrap();
    std::os::unix::fs::symlink("/etc", t.data.join("etc-link")).unwrap();
    for path in [
        "/data/dir-link/secret.txt",
        "/data/file-link",
        "/data/etc-link/passwd",
    ] {
        let result = hostile(request("read", path, grant(&t.data, "/data", DirMode::Rw))).await;
        assert_contained(&result, SECRET);
        assert_contained(&result, "root:");
    }
    let result = hostile(request(
        "write",
        "/data/file-link",
        grant(&t.data, "/data", DirMode::Rw),
    ))
    .await;
    assert_eq!(result.status, RunStatus::Error, "{result:#?}");
    assert_eq!(
        std::fs::read_to_string(t.root.join("secret.txt")).unwrap(),
        SECRET
    );
}

#[tokio::test]
async fn read_only_grants_are_read_only() {
    let t = tree();
    let result = hostile(request(
        "write",
        "/data/new.txt",
        grant(&t.data, "/data", DirMode::Ro),
    ))
    .await;
    assert_eq!(result.status, RunStatus::Error, "{result:#?}");
    assert!(!t.data.join("new.txt").exists());
    let result = hostile(request(
        "delete",
        "/data/inside.txt",
        grant(&t.data, "/data", DirMode::Ro),
    ))
    .await;
    assert_eq!(result.status, RunStatus::Error, "{result:#?}");
    assert!(t.data.join("inside.txt").exists());

    // The same write through a read-write grant succeeds.
    let result = hostile(request(
        "write",
        "/data/new.txt",
        grant(&t.data, "/data", DirMode::Rw),
    ))
    .await;
    assert_eq!(result.status, RunStatus::Success, "{result:#?}");
    assert!(t.data.join("new.txt").exists());
}

#[tokio::test]
async fn a_dry_run_cannot_write_even_to_a_read_write_grant() {
    let t = tree();
    let mut req = request(
        "write",
        "/data/new.txt",
        grant(&t.data, "/data", DirMode::Rw),
    );
    req.dry_run = true;
    let result = hostile(req).await;
    assert_eq!(result.status, RunStatus::Error, "{result:#?}");
    assert!(result.dry_run);
    assert!(!t.data.join("new.txt").exists());

    let mut req = request(
        "delete",
        "/data/inside.txt",
        grant(&t.data, "/data", DirMode::Rw),
    );
    req.dry_run = true;
    assert_eq!(hostile(req).await.status, RunStatus::Error);
    assert!(t.data.join("inside.txt").exists());
}

#[tokio::test]
async fn a_missing_granted_directory_is_a_clear_error() {
    let t = tree();
    let missing = t.root.join("nope");
    let result = hostile(request(
        "list",
        "/data",
        grant(&missing, "/data", DirMode::Ro),
    ))
    .await;
    assert_eq!(result.status, RunStatus::Error);
    assert!(
        result
            .error
            .unwrap()
            .contains(&missing.display().to_string())
    );
}

#[tokio::test]
async fn no_environment_no_arguments_no_network() {
    let result = hostile(request("env", "", vec![])).await;
    assert_eq!(result.status, RunStatus::Success, "{result:#?}");
    assert_eq!(
        result.summary.as_deref(),
        Some("no environment, no arguments")
    );
    // PostgreSQL listens here on the test machine; the guest must not reach it.
    let result = hostile(request("connect", "127.0.0.1:5432", vec![])).await;
    assert_eq!(result.status, RunStatus::Error, "{result:#?}");
    assert!(!result.summary.unwrap_or_default().contains("ESCAPED"));
}

#[tokio::test]
async fn a_log_flood_is_capped_and_marked() {
    let result = hostile(request("log-flood", "", vec![])).await;
    assert_eq!(result.status, RunStatus::Success, "{result:#?}");
    let cap = housekeeper::capabilities::output::DEFAULT_OUTPUT_CAP;
    let (kept, marker) = result
        .output
        .split_once("[output truncated:")
        .expect("truncation marker");
    assert!(kept.len() <= cap, "{} bytes kept", kept.len());
    assert!(marker.len() < 200);
    assert!(kept.starts_with("[info] 0 xxx"));
}

#[tokio::test]
async fn things_that_are_not_tasks_are_refused_with_a_clear_message() {
    let rt = runtime();
    let wrong = std::fs::read(fixture_path("wrong-world")).unwrap();
    let err = rt.load("wrong-world.wasm", &wrong).err().unwrap();
    assert!(matches!(err, LoadError::WrongWorld { .. }), "{err}");
    assert!(err.to_string().contains("housekeeper:task"), "{err}");

    let err = rt.load("core.wasm", b"\0asm\x01\0\0\0").err().unwrap();
    assert!(matches!(err, LoadError::CoreModule { .. }), "{err}");

    let err = rt.load("random.wasm", &[0x5a; 4096]).err().unwrap();
    assert!(matches!(err, LoadError::NotWasm { .. }), "{err}");
    assert!(err.to_string().contains("random.wasm"));

    let good = std::fs::read(fixture_path("noop")).unwrap();
    let err = rt
        .load("truncated.wasm", &good[..good.len() / 2])
        .err()
        .unwrap();
    assert!(matches!(err, LoadError::Invalid { .. }), "{err}");
}

#[tokio::test]
async fn runs_record_the_component_hash_and_fuel() {
    let c = component(&fixture_path("noop"));
    let mut req = request("", "", vec![]);
    req.task_name = "noop".into();
    let result = runtime().run(&c, req).await;
    assert_eq!(result.status, RunStatus::Success);
    assert_eq!(result.component_hash, c.hash());
    assert_eq!(result.component_hash.len(), 64);
    assert!(result.fuel_used > 0);
}

/// `tasks/fixtures/many-memories.wat`: nine core instances, each with its
/// own memory; `run` grows eight of them by 16 MiB each.
fn many_memories() -> housekeeper::runtime::TaskComponent {
    many_memories_with(0)
}

/// The fixture with `more` further instances of its one-memory module,
/// each adding a (never grown) memory.
fn many_memories_with(more: usize) -> housekeeper::runtime::TaskComponent {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tasks/fixtures/many-memories.wat");
    let text = std::fs::read_to_string(&path).unwrap();
    let last = "(core instance $e8 (instantiate $extra))";
    let extra: String = (0..more)
        .map(|i| format!("\n  (core instance $more{i} (instantiate $extra))"))
        .collect();
    let bytes = wat::parse_str(text.replace(last, &format!("{last}{extra}")))
        .expect("the fixture assembles");
    runtime()
        .load("many-memories.wat", &bytes)
        .expect("the fixture is a task component")
}

#[tokio::test]
async fn a_run_may_create_at_most_16_memories() {
    let mut request = request("", "", vec![]);
    request.memory_bytes = 256 << 20;
    // 9 memories of its own plus 7: 16, the most a run may have.
    let most = runtime().run(&many_memories_with(7), request.clone()).await;
    assert_eq!(most.status, RunStatus::Success, "{most:#?}");
    // One more is refused when the instance is made, before any guest code.
    let over = runtime().run(&many_memories_with(8), request).await;
    assert_ne!(over.status, RunStatus::Success, "{over:#?}");
    let error = over.error.unwrap();
    assert!(error.contains("memor"), "{error}");
}

#[tokio::test]
async fn the_memory_cap_covers_every_memory_of_the_run_together() {
    let c = many_memories();
    let mut request = request("", "", vec![]);
    // Each memory alone stays under the cap; together they hold 128 MiB.
    request.memory_bytes = 32 << 20;
    let capped = runtime().run(&c, request.clone()).await;
    assert_eq!(capped.status, RunStatus::OutOfMemory, "{capped:#?}");
    // With room for all of them, the same run succeeds: the fixture itself
    // is sound.
    request.memory_bytes = 256 << 20;
    let roomy = runtime().run(&c, request).await;
    assert_eq!(roomy.status, RunStatus::Success, "{roomy:#?}");
    assert_eq!(roomy.summary.as_deref(), Some("held"));
}

async fn oversize(what: &str) -> RunResult {
    let c = component(&fixture_path("oversize"));
    let mut request = request("", "", vec![]);
    request.memory_bytes = 256 << 20;
    request
        .config
        .insert("what".into(), ConfigValue::Text(what.into()));
    runtime().run(&c, request).await
}

#[tokio::test]
async fn what_a_task_hands_back_is_capped_and_marked() {
    use housekeeper::runtime::report::*;
    let summary = oversize("summary").await;
    assert_eq!(summary.status, RunStatus::Success, "{:?}", summary.error);
    let text = summary.summary.unwrap();
    assert!(text.len() < MAX_SUMMARY + 64, "{}", text.len());
    assert!(!text.contains('\n'), "one line");
    assert!(text.starts_with("first line "), "{}", &text[..40]);
    assert!(
        text.ends_with(" more bytes]"),
        "{}",
        &text[text.len() - 40..]
    );

    let error = oversize("error").await;
    assert_eq!(error.status, RunStatus::Error);
    let text = error.error.unwrap();
    assert!(text.len() < MAX_ERROR + 64, "{}", text.len());
    assert!(text.ends_with(" more bytes]"));

    let metrics = oversize("metrics").await;
    assert_eq!(metrics.status, RunStatus::Success, "{:?}", metrics.error);
    assert_eq!(metrics.metrics.len(), MAX_METRICS);
    assert!(
        metrics
            .metrics
            .iter()
            .all(|m| m.name.len() <= MAX_METRIC_NAME)
    );
    assert!(
        metrics.output.contains("2 metrics dropped: a name must be"),
        "{}",
        metrics.output
    );
    assert!(
        metrics.output.contains("99900 metrics dropped: at most"),
        "{}",
        metrics.output
    );
}

#[tokio::test]
async fn what_describe_says_is_capped_and_marked() {
    use housekeeper::runtime::report::*;
    let c = component(&fixture_path("oversize"));
    let info = runtime().describe(&c).await.unwrap();
    assert!(info.description.len() < MAX_DESCRIPTION + 64);
    assert!(info.description.ends_with(" more bytes]"));
    assert_eq!(info.capabilities.len(), MAX_CAPABILITIES + 1);
    assert!(
        info.capabilities
            .iter()
            .all(|c| c.len() < MAX_CAPABILITY + 64)
    );
    assert!(
        info.capabilities
            .last()
            .unwrap()
            .contains("9936 more capabilities")
    );
}

// ---- Special files, descriptors, listings, handles and disk (fs-hog) ----

fn fs_hog_request(mode: &str, path: &str, count: u64, dirs: Vec<DirGrant>) -> RunRequest {
    let mut request = RunRequest::from_manifest(
        &Manifest::implicit("fs-hog", "fs-hog.wasm"),
        housekeeper::cli::new_run_id(),
        Trigger::Manual,
    );
    request.timeout = Duration::from_secs(30);
    request.dirs = dirs;
    for (key, value) in [("mode", mode), ("path", path)] {
        request
            .config
            .insert(key.into(), ConfigValue::Text(value.into()));
    }
    request
        .config
        .insert("count".into(), ConfigValue::Integer(count as i64));
    request
}

/// Runs fs-hog on a thread of its own and waits a bounded time for it: a
/// guest that blocks its thread fails the test instead of hanging it.
fn fs_hog(request: RunRequest) -> RunResult {
    let c = component(&fixture_path("fs-hog"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _ = tx.send(rt.block_on(runtime().run(&c, request)));
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("the run returns (its thread is not blocked in the host)")
}

#[test]
fn special_files_in_a_grant_are_refused_at_open() {
    let t = tree();
    mknod(&t.data.join("fifo"), rustix::fs::FileType::Fifo, 0, 0);
    let _socket = std::os::unix::net::UnixListener::bind(t.data.join("socket")).unwrap();
    // /dev/zero: endless reads; /dev/null; a loop block device.
    mknod(
        &t.data.join("zero"),
        rustix::fs::FileType::CharacterDevice,
        1,
        5,
    );
    mknod(
        &t.data.join("null"),
        rustix::fs::FileType::CharacterDevice,
        1,
        3,
    );
    mknod(
        &t.data.join("loop"),
        rustix::fs::FileType::BlockDevice,
        7,
        0,
    );
    std::os::unix::fs::symlink("fifo", t.data.join("fifo-link")).unwrap();
    let grant = grant(&t.data, "/data", DirMode::Rw);
    for (name, kind) in [
        ("fifo", "a FIFO"),
        ("fifo-link", "a FIFO"),
        ("socket", "a socket"),
        ("zero", "a character device"),
        ("null", "a character device"),
        ("loop", "a block device"),
    ] {
        for mode in ["open", "open-write"] {
            let path = format!("/data/{name}");
            let result = fs_hog(fs_hog_request(mode, &path, 1, grant.clone()));
            assert_eq!(
                result.status,
                RunStatus::Error,
                "{mode} {name}: {result:#?}"
            );
            assert!(
                result.error.as_deref().unwrap().contains(&path),
                "{result:#?}"
            );
            assert!(
                result.output.contains("refused to open") && result.output.contains(kind),
                "{mode} {name}: {}",
                result.output
            );
        }
    }
    // A symlink to a device outside the grant: the path sandbox refuses it
    // before anything is opened.
    std::os::unix::fs::symlink("/dev/zero", t.data.join("zero-link")).unwrap();
    let result = fs_hog(fs_hog_request("open", "/data/zero-link", 1, grant.clone()));
    assert_eq!(result.status, RunStatus::Error, "{result:#?}");
    assert!(
        !result.output.contains("refused to open"),
        "{}",
        result.output
    );
    // A regular file beside them opens, for reading and for writing.
    for mode in ["open", "open-write"] {
        let result = fs_hog(fs_hog_request(mode, "/data/inside.txt", 1, grant.clone()));
        assert_eq!(result.status, RunStatus::Success, "{result:#?}");
    }
}

#[test]
fn open_descriptors_are_capped_per_run() {
    let t = tree();
    let grant = grant(&t.data, "/data", DirMode::Ro);
    for mode in ["hold-files", "hold-streams"] {
        let result = fs_hog(fs_hog_request(mode, "/data/inside.txt", 300, grant.clone()));
        assert_eq!(result.status, RunStatus::Error, "{result:#?}");
        let error = result.error.unwrap();
        assert!(error.starts_with("held 256 "), "{mode}: {error}");
        assert!(error.contains("quota"), "{error}");
        assert!(
            result.output.contains("limits.descriptors"),
            "{}",
            result.output
        );
    }
    // The manifest can grant more.
    let mut request = fs_hog_request("hold-files", "/data/inside.txt", 300, grant.clone());
    request.resources.descriptors = 300;
    let result = fs_hog(request);
    assert_eq!(result.status, RunStatus::Success, "{result:#?}");
    // Closed descriptors give their place back.
    let result = fs_hog(fs_hog_request("reopen", "/data/inside.txt", 1000, grant));
    assert_eq!(result.status, RunStatus::Success, "{result:#?}");
}

#[test]
fn directory_listings_are_capped_per_run() {
    let t = tree();
    let grant = grant(&t.data, "/data", DirMode::Ro);
    let result = fs_hog(fs_hog_request("hold-listings", "/data", 100, grant.clone()));
    assert_eq!(result.status, RunStatus::Error, "{result:#?}");
    let error = result.error.unwrap();
    assert!(error.starts_with("held 32 listings"), "{error}");
    assert!(error.contains("quota"), "{error}");
    assert!(
        result.output.contains("limits.dir_streams"),
        "{}",
        result.output
    );
    let result = fs_hog(fs_hog_request("relist", "/data", 100, grant));
    assert_eq!(result.status, RunStatus::Success, "{result:#?}");
}

#[test]
fn host_handles_are_capped_per_run() {
    let t = tree();
    let grant = grant(&t.data, "/data", DirMode::Ro);
    // Streams of one file: no descriptor more, a handle each.
    let result = fs_hog(fs_hog_request(
        "hold-handles",
        "/data/inside.txt",
        5000,
        grant.clone(),
    ));
    assert_eq!(result.status, RunStatus::Error, "{result:#?}");
    let error = result.error.unwrap();
    assert!(error.contains("quota"), "{error}");
    assert!(
        result.output.contains("limits.handles"),
        "{}",
        result.output
    );
    // Clock pollables: the interface has no error to give, so the run stops.
    let result = fs_hog(fs_hog_request("hold-pollables", "", 5000, grant.clone()));
    assert_eq!(result.status, RunStatus::Trapped, "{result:#?}");
    assert!(result.error.unwrap().contains("limits.handles"));
    // Each clock pollable holds two handles: its deadline and the pollable.
    let mut request = fs_hog_request("hold-pollables", "", 5000, grant);
    request.resources.handles = 11_000;
    let result = fs_hog(request);
    assert_eq!(result.status, RunStatus::Success, "{result:#?}");
}

/// Every way to write a file: the descriptor's `write`, each output stream
/// call (plain, blocking, zeroes, splice) and appending.
const WRITE_PATHS: [&str; 8] = [
    "write-descriptor",
    "stream",
    "blocking",
    "zeroes",
    "blocking-zeroes",
    "splice",
    "blocking-splice",
    "append",
];

fn write_request(how: &str, path: &str, count: u64, dirs: Vec<DirGrant>) -> RunRequest {
    let mut request = fs_hog_request(how, path, count, dirs);
    request
        .config
        .insert("source".into(), ConfigValue::Text("/data/source".into()));
    request
}

#[test]
fn every_write_path_spends_the_write_budget() {
    let t = tree();
    std::fs::write(t.data.join("source"), vec![b's'; 100_000]).unwrap();
    let grant = grant(&t.data, "/data", DirMode::Rw);
    let file = t.data.join("out");
    for how in WRITE_PATHS {
        let mut request = write_request(how, "/data/out", 4 << 20, grant.clone());
        request.resources.write_bytes = 1 << 20;
        let result = fs_hog(request);
        assert_eq!(result.status, RunStatus::Error, "{how}: {result:#?}");
        assert!(
            result.error.as_deref().unwrap().contains("quota"),
            "{how}: {result:#?}"
        );
        assert!(
            result.output.contains("limits.write_bytes"),
            "{how}: {}",
            result.output
        );
        let written = std::fs::metadata(&file).unwrap().len();
        assert!(written <= 1 << 20, "{how} wrote {written} bytes");

        // The default budget lets the same write through.
        let result = fs_hog(write_request(how, "/data/out", 4 << 20, grant.clone()));
        assert_eq!(result.status, RunStatus::Success, "{how}: {result:#?}");
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 4 << 20, "{how}");
    }
}

#[test]
fn growing_a_file_without_writing_it_spends_the_write_budget() {
    let t = tree();
    let grant = grant(&t.data, "/data", DirMode::Rw);
    let file = t.data.join("sparse");
    // A 1 TiB file by set-size, or by one byte written 1 TiB in.
    for how in ["set-size", "sparse"] {
        let result = fs_hog(write_request(how, "/data/sparse", 1 << 40, grant.clone()));
        assert_eq!(result.status, RunStatus::Error, "{how}: {result:#?}");
        assert!(
            result.error.as_deref().unwrap().contains("quota"),
            "{result:#?}"
        );
        assert!(
            result.output.contains("limits.write_bytes"),
            "{}",
            result.output
        );
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 0, "{how}");

        let result = fs_hog(write_request(how, "/data/sparse", 1 << 20, grant.clone()));
        assert_eq!(result.status, RunStatus::Success, "{how}: {result:#?}");
        assert!(std::fs::metadata(&file).unwrap().len() >= 1 << 20, "{how}");
    }
}

#[test]
fn the_write_budget_is_one_per_run_across_files_and_grants() {
    let t = tree();
    let other = t.root.join("outside");
    let mut dirs = grant(&t.data, "/data", DirMode::Rw);
    dirs.extend(grant(&other, "/other", DirMode::Rw));
    let mut request = write_request("blocking", "/data/one,/other/two", 600 << 10, dirs);
    request.resources.write_bytes = 1 << 20;
    let result = fs_hog(request);
    assert_eq!(result.status, RunStatus::Error, "{result:#?}");
    assert_eq!(
        std::fs::metadata(t.data.join("one")).unwrap().len(),
        600 << 10
    );
    let two = std::fs::metadata(other.join("two")).unwrap().len();
    assert!(two <= (1 << 20) - (600 << 10), "{two}");
}

/// Every call that makes a directory entry: a directory, a symlink, a hard
/// link, a file created by `open-at` (plain and exclusive).
const ENTRY_PATHS: [&str; 5] = ["mkdir", "symlink", "link", "create", "create-exclusive"];

fn entry_request(how: &str, count: u64, write_bytes: u64, dirs: Vec<DirGrant>) -> RunRequest {
    let mut request = fs_hog_request(how, "/data/made", count, dirs);
    request.config.insert(
        "source".into(),
        ConfigValue::Text("/data/inside.txt".into()),
    );
    request.resources.write_bytes = write_bytes;
    request
}

/// How many entries the run said it made before it was stopped.
fn entries_made(result: &RunResult) -> u64 {
    let error = result.error.as_deref().unwrap_or_default();
    let held = error
        .strip_prefix("held ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("{result:#?}"));
    held.parse().unwrap()
}

#[test]
fn every_new_directory_entry_spends_the_write_budget() {
    for how in ENTRY_PATHS {
        let t = tree();
        std::fs::create_dir(t.data.join("made")).unwrap();
        let grant = grant(&t.data, "/data", DirMode::Rw);
        let made = || std::fs::read_dir(t.data.join("made")).unwrap().count();

        // No writing means no new entries either.
        let result = fs_hog(entry_request(how, 100, 0, grant.clone()));
        assert_eq!(result.status, RunStatus::Error, "{how}: {result:#?}");
        let error = result.error.as_deref().unwrap();
        assert!(error.starts_with("held 0 entries"), "{how}: {error}");
        assert!(error.contains("quota"), "{how}: {error}");
        assert_eq!(
            result.output.matches("limits.write_bytes").count(),
            1,
            "{how}: {}",
            result.output
        );
        assert_eq!(made(), 0, "{how}");

        // A budget of 64 KiB makes at most 16 entries of 4 KiB each.
        let result = fs_hog(entry_request(how, 100, 64 << 10, grant.clone()));
        assert_eq!(result.status, RunStatus::Error, "{how}: {result:#?}");
        let n = entries_made(&result);
        assert!((10..16).contains(&n), "{how}: made {n}");
        assert_eq!(made() as u64, n, "{how}");
        assert!(result.output.contains("limits.write_bytes"), "{how}");

        // The default budget lets them all through.
        std::fs::remove_dir_all(t.data.join("made")).unwrap();
        std::fs::create_dir(t.data.join("made")).unwrap();
        let result = fs_hog(entry_request(how, 100, 1 << 30, grant));
        assert_eq!(result.status, RunStatus::Success, "{how}: {result:#?}");
        assert_eq!(made(), 100, "{how}");
    }
}

#[test]
fn a_symlink_spends_the_write_budget_for_its_target() {
    let t = tree();
    std::fs::create_dir(t.data.join("made")).unwrap();
    let grant = grant(&t.data, "/data", DirMode::Rw);
    let mut request = entry_request("symlink", 100, 64 << 10, grant);
    request
        .config
        .insert("target_len".into(), ConfigValue::Integer(4000));
    let result = fs_hog(request);
    assert_eq!(result.status, RunStatus::Error, "{result:#?}");
    // About 8 KiB each: the entry and its target.
    let n = entries_made(&result);
    assert!((6..9).contains(&n), "made {n}");
}

#[test]
fn opening_a_file_that_exists_makes_no_entry_and_costs_nothing() {
    let t = tree();
    std::fs::create_dir(t.data.join("made")).unwrap();
    for i in 0..100 {
        std::fs::write(t.data.join(format!("made/e{i}")), "").unwrap();
    }
    let grant = grant(&t.data, "/data", DirMode::Rw);
    let result = fs_hog(entry_request("create", 100, 0, grant.clone()));
    assert_eq!(result.status, RunStatus::Success, "{result:#?}");
    assert!(
        !result.output.contains("limits.write_bytes"),
        "{}",
        result.output
    );
}

/// A granted directory `/data/big` of `entries` empty files.
fn big_directory(entries: usize) -> (Tree, Vec<DirGrant>) {
    let t = tree();
    let big = t.data.join("big");
    std::fs::create_dir(&big).unwrap();
    for i in 0..entries {
        std::fs::File::create(big.join(format!("f{i:05}"))).unwrap();
    }
    let grant = grant(&t.data, "/data", DirMode::Ro);
    (t, grant)
}

fn listing_request(mode: &str, count: u64, memory: u64, dirs: Vec<DirGrant>) -> RunRequest {
    let mut request = fs_hog_request(mode, "/data/big", count, dirs);
    request.memory_bytes = memory;
    request
}

#[test]
fn what_directory_listings_hold_on_the_host_counts_against_limits_memory() {
    // 40,000 entries: about 20 MB of host memory per listing.
    let (_t, grant) = big_directory(40_000);

    // Under 8 MiB the listing does not fit; under 32 MiB it does.
    let result = fs_hog(listing_request("hold-listings", 1, 8 << 20, grant.clone()));
    assert_eq!(result.status, RunStatus::Error, "{result:#?}");
    let error = result.error.as_deref().unwrap();
    assert!(error.starts_with("held 0 listings"), "{error}");
    assert!(error.contains("insufficient-memory"), "{error}");
    assert!(result.output.contains("limits.memory"), "{}", result.output);
    let result = fs_hog(listing_request("hold-listings", 1, 32 << 20, grant.clone()));
    assert_eq!(result.status, RunStatus::Success, "{result:#?}");

    // Listings held together share the budget, with the guest's own
    // memory: under 48 MiB the third does not fit, well under
    // limits.dir_streams.
    let result = fs_hog(listing_request(
        "hold-listings",
        10,
        48 << 20,
        grant.clone(),
    ));
    assert_eq!(result.status, RunStatus::Error, "{result:#?}");
    let error = result.error.as_deref().unwrap();
    assert!(error.starts_with("held 2 listings"), "{error}");
    assert!(error.contains("insufficient-memory"), "{error}");
    assert_eq!(
        result.output.matches("limits.memory").count(),
        1,
        "{}",
        result.output
    );

    // A dropped listing gives its memory back: twenty, one at a time, fit
    // where two at once do not.
    let result = fs_hog(listing_request("relist", 20, 32 << 20, grant));
    assert_eq!(result.status, RunStatus::Success, "{result:#?}");
}

#[test]
fn linear_memory_cannot_grow_into_what_listings_hold() {
    let (_t, grant) = big_directory(40_000);
    let request = |listings: u64| {
        let mut request = listing_request("hold-listings", listings, 32 << 20, grant.clone());
        request
            .config
            .insert("alloc_mib".into(), ConfigValue::Integer(24));
        request
    };
    // 24 MiB fit beside the guest under 32 MiB, but not beside a listing
    // of about 20 MB as well.
    let result = fs_hog(request(0));
    assert_eq!(result.status, RunStatus::Success, "{result:#?}");
    let result = fs_hog(request(1));
    assert_eq!(result.status, RunStatus::OutOfMemory, "{result:#?}");
}

#[tokio::test]
async fn a_grant_of_a_kernel_filesystem_is_refused_before_the_task_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let link = tmp.path().join("proc-link");
    std::os::unix::fs::symlink("/proc", &link).unwrap();
    for host in [
        Path::new("/proc"),
        Path::new("/"),
        Path::new("/sys"),
        link.as_path(),
    ] {
        let result = hostile(request(
            "read",
            "/g/self/environ",
            grant(host, "/g", DirMode::Ro),
        ))
        .await;
        assert_eq!(result.status, RunStatus::Error, "{host:?}: {result:#?}");
        let error = result.error.unwrap();
        assert!(
            error.contains("where the kernel exposes the host"),
            "{error}"
        );
        assert!(!result.output.contains("DATABASE_URL"));
    }
}

/// A task sees the database's time, as its schedule does: on a replica
/// whose clock is an hour fast, the guest's wall clock is not.
#[tokio::test]
async fn the_guest_clock_is_the_databases() {
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    for ahead in [0i64, 3600, -86_400] {
        let mut r = request("clock", "", vec![]);
        r.clock_ahead = chrono::Duration::seconds(ahead);
        let before = now();
        let result = hostile(r).await;
        let after = now();
        assert_eq!(result.status, RunStatus::Success, "{result:?}");
        let seen: i64 = result.summary.unwrap().parse().unwrap();
        assert!(
            (before - ahead..=after - ahead).contains(&seen),
            "ahead {ahead}: saw {seen}, host {before}..{after}"
        );
    }
}

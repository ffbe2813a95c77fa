//! Helpers for the end-to-end tests: where the built components and the
//! binary are, and one shared runtime with each component compiled once per
//! test process.

use housekeeper::runtime::{Runtime, RuntimeOptions, TaskComponent};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

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
    use housekeeper::model::ConfigValue;
    let mut request = housekeeper::runtime::RunRequest::from_manifest(
        &housekeeper::manifest::Manifest::implicit(task, "hostile.wasm"),
        housekeeper::cli::new_run_id(),
        housekeeper::model::Trigger::Manual,
    );
    request.timeout = std::time::Duration::from_secs(30);
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
        .config
        .insert("mode".into(), ConfigValue::Text(mode.into()));
    request
        .config
        .insert("sql".into(), ConfigValue::Text(sql.into()));
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

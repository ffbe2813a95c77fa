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

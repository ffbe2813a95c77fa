//! Loading components: the on-disk compile cache, the sharing of compiled
//! code, and the runtime `describe()` runs on.

use housekeeper::manifest::Manifest;
use housekeeper::model::{RunStatus, Trigger};
use housekeeper::runtime::{RunRequest, Runtime, RuntimeOptions};
use housekeeper_tests::fixture_path;
use std::path::Path;

fn runtime_with_cache(dir: &Path) -> Runtime {
    Runtime::new(RuntimeOptions {
        cache_dir: Some(dir.to_owned()),
        ..RuntimeOptions::default()
    })
    .unwrap()
}

fn entries(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    v.sort();
    v
}

async fn runs(rt: &Runtime, c: &housekeeper::runtime::TaskComponent) {
    let req = RunRequest::from_manifest(
        &Manifest::implicit("noop", "noop.wasm"),
        "1".into(),
        Trigger::Manual,
    );
    assert_eq!(rt.run(c, req).await.status, RunStatus::Success);
}

#[tokio::test]
async fn a_restart_loads_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture_path("noop")).unwrap();
    let first = runtime_with_cache(dir.path())
        .load("noop.wasm", &bytes)
        .unwrap();
    assert!(!first.from_disk_cache());
    let files = entries(dir.path());
    assert_eq!(files.len(), 1);
    assert!(
        files[0]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(first.hash())
    );

    let rt = runtime_with_cache(dir.path());
    let second = rt.load("noop.wasm", &bytes).unwrap();
    assert!(second.from_disk_cache());
    assert_eq!(second.hash(), first.hash());
    runs(&rt, &second).await;
}

#[tokio::test]
async fn corrupt_or_truncated_entries_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture_path("noop")).unwrap();
    runtime_with_cache(dir.path())
        .load("noop.wasm", &bytes)
        .unwrap();
    let entry = entries(dir.path()).remove(0);
    let good = std::fs::read(&entry).unwrap();

    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0xff;
    for broken in [
        flipped,
        good[..good.len() / 3].to_vec(),
        vec![],
        b"not a cache entry".to_vec(),
    ] {
        std::fs::write(&entry, &broken).unwrap();
        let rt = runtime_with_cache(dir.path());
        let c = rt.load("noop.wasm", &bytes).unwrap();
        assert!(!c.from_disk_cache(), "a broken entry must not be used");
        runs(&rt, &c).await;
        // Rebuilt: the next start uses it again.
        assert_eq!(std::fs::read(&entry).unwrap(), good);
        assert!(
            runtime_with_cache(dir.path())
                .load("noop.wasm", &bytes)
                .unwrap()
                .from_disk_cache()
        );
    }
}

#[tokio::test]
async fn a_well_framed_entry_that_is_not_compiled_code_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture_path("noop")).unwrap();
    let c = runtime_with_cache(dir.path())
        .load("noop.wasm", &bytes)
        .unwrap();
    // Its digest is right, but wasmtime refuses the payload.
    let entry = entries(dir.path()).remove(0);
    let payload = b"\x7fELF-but-not-really".to_vec();
    let mut framed = {
        use sha2::Digest;
        sha2::Sha256::digest(&payload).to_vec()
    };
    framed.extend_from_slice(&payload);
    std::fs::write(&entry, framed).unwrap();
    let again = runtime_with_cache(dir.path())
        .load("noop.wasm", &bytes)
        .unwrap();
    assert!(!again.from_disk_cache());
    assert_eq!(again.hash(), c.hash());
}

#[test]
fn the_same_bytes_share_one_compiled_copy() {
    let rt = Runtime::new(RuntimeOptions::default()).unwrap();
    let bytes = std::fs::read(fixture_path("noop")).unwrap();
    let a = rt.load("a.wasm", &bytes).unwrap();
    let b = rt.load("b.wasm", &bytes).unwrap();
    assert!(a.shares_code_with(&b));
    let other = rt
        .load(
            "hostile.wasm",
            &std::fs::read(fixture_path("hostile")).unwrap(),
        )
        .unwrap();
    assert!(!a.shares_code_with(&other));
}

/// The loader calls `describe()` on the runtime it is given for guests, not
/// on its caller's (in `serve`, the one serving HTTP). The caller here has
/// no timer, which `describe()` needs: run there, it would panic.
#[test]
fn describe_runs_on_the_guests_runtime() {
    let guests = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let caller = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture_path("noop"), dir.path().join("noop.wasm")).unwrap();
    let rt = runtime_with_cache(&dir.path().join("cache"));
    let (defs, errors) = caller
        .block_on(housekeeper::loader::load_tasks(
            &rt,
            dir.path(),
            guests.handle(),
        ))
        .unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    let names: Vec<&str> = defs.iter().map(|d| d.info.name.as_str()).collect();
    assert_eq!(names, ["noop"]);
}

/// Compiled in a bounded child process of the real binary: the worker's
/// output is what the cache stores, and a restart loads it from there.
#[tokio::test]
async fn a_compile_worker_s_output_is_cached_and_loads_back() {
    use housekeeper::runtime::compile::{CompileLimits, Isolated};
    let dir = tempfile::tempdir().unwrap();
    let isolated = || {
        Runtime::new(RuntimeOptions {
            cache_dir: Some(dir.path().to_owned()),
            compile: CompileLimits {
                isolated: Some(Isolated {
                    program: housekeeper_tests::binary(),
                    timeout: std::time::Duration::from_secs(120),
                    memory: 4 << 30,
                }),
                ..CompileLimits::default()
            },
            ..RuntimeOptions::default()
        })
        .unwrap()
    };
    let bytes = std::fs::read(fixture_path("noop")).unwrap();
    let rt = isolated();
    let first = rt.load("noop.wasm", &bytes).unwrap();
    assert!(!first.from_disk_cache());
    runs(&rt, &first).await;
    assert_eq!(entries(dir.path()).len(), 1);

    let rt = isolated();
    let second = rt.load("noop.wasm", &bytes).unwrap();
    assert!(second.from_disk_cache());
    runs(&rt, &second).await;
}

/// A component that hit a compile bound is not compiled again by the same
/// runtime: a rescan of a directory holding it costs nothing more.
#[test]
fn a_component_over_a_compile_bound_is_not_compiled_again() {
    use housekeeper::runtime::LoadError;
    use housekeeper::runtime::compile::{CompileLimits, Isolated};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // A compile worker that counts how often it is started.
    let worker = dir.path().join("worker.sh");
    let count = dir.path().join("count");
    std::fs::write(
        &worker,
        format!(
            "#!/bin/sh\necho started >> {}\nexec {} \"$@\"\n",
            count.display(),
            housekeeper_tests::binary().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).unwrap();
    let rt = Runtime::new(RuntimeOptions {
        compile: CompileLimits {
            isolated: Some(Isolated {
                program: worker,
                timeout: std::time::Duration::from_secs(120),
                memory: 64 << 20,
            }),
            ..CompileLimits::default()
        },
        ..RuntimeOptions::default()
    })
    .unwrap();
    let bomb = housekeeper_tests::compile_bomb(300_000);
    for _ in 0..3 {
        let err = rt
            .load("bomb.wasm", &bomb)
            .err()
            .expect("the bomb is refused");
        assert!(matches!(err, LoadError::CompileBound { .. }), "{err}");
        assert!(
            err.to_string().contains("HOUSEKEEPER_COMPILE_MEMORY"),
            "{err}"
        );
    }
    let started = std::fs::read_to_string(&count).unwrap();
    assert_eq!(started.lines().count(), 1, "{started}");
    // Other bytes still compile.
    let noop = std::fs::read(fixture_path("noop")).unwrap();
    rt.load("noop.wasm", &noop).unwrap();
}

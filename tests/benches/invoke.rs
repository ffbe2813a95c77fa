//! Invocation overhead: instantiate + run of the no-op task (pre-linked
//! `InstancePre`, pooling allocator) against fork/exec of `/bin/true`, in one
//! run, as a ratio.

use housekeeper::manifest::Manifest;
use housekeeper::model::{RunStatus, Trigger};
use housekeeper::runtime::{RunRequest, Runtime, RuntimeOptions};
use housekeeper_tests::{fixture_path, report};
use std::time::{Duration, Instant};

const WARMUP: usize = 200;
const SAMPLES: usize = 5_000;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let manifest = Manifest::implicit("noop", "noop.wasm");
    let mut wasm_p50 = Duration::ZERO;
    for pooling in [true, false] {
        let runtime = Runtime::new(RuntimeOptions {
            pooling,
            ..RuntimeOptions::default()
        })
        .unwrap();
        let component = runtime.load_file(&fixture_path("noop")).unwrap();
        let samples = rt.block_on(async {
            let mut samples = Vec::with_capacity(SAMPLES);
            for i in 0..WARMUP + SAMPLES {
                let request =
                    RunRequest::from_manifest(&manifest, format!("run-{i}"), Trigger::Manual);
                let start = Instant::now();
                let result = runtime.run(&component, request).await;
                let elapsed = start.elapsed();
                assert_eq!(result.status, RunStatus::Success);
                if i >= WARMUP {
                    samples.push(elapsed);
                }
            }
            samples
        });
        let label = if runtime.pooling() {
            "pooling"
        } else {
            "on-demand"
        };
        let p50 = report(&format!("wasm no-op task, {label} allocator"), samples);
        if pooling {
            wasm_p50 = p50;
        }
    }

    // Compile cache: a cold compile against a load from a warm cache, each
    // in a fresh runtime (so nothing is shared in memory).
    let cleanup = std::fs::read(housekeeper_tests::task_path("cleanup-old-logs")).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let fresh = |cache_dir: Option<&std::path::Path>| {
        Runtime::new(RuntimeOptions {
            cache_dir: cache_dir.map(|d| d.to_owned()),
            ..RuntimeOptions::default()
        })
        .unwrap()
    };
    fresh(Some(cache.path()))
        .load("cleanup-old-logs.wasm", &cleanup)
        .unwrap();
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..20 {
        let rt = fresh(None);
        let start = Instant::now();
        rt.load("cleanup-old-logs.wasm", &cleanup).unwrap();
        cold.push(start.elapsed());
        let rt = fresh(Some(cache.path()));
        let start = Instant::now();
        assert!(
            rt.load("cleanup-old-logs.wasm", &cleanup)
                .unwrap()
                .from_disk_cache()
        );
        warm.push(start.elapsed());
    }
    let cold_p50 = report("compile cleanup-old-logs, cold", cold);
    let warm_p50 = report("compile cleanup-old-logs, cache hit", warm);
    println!(
        "ratio (cold / cache hit, p50): {:.1}",
        cold_p50.as_secs_f64() / warm_p50.as_secs_f64()
    );

    let mut native = Vec::with_capacity(SAMPLES / 5);
    for i in 0..WARMUP + SAMPLES / 5 {
        let start = Instant::now();
        let status = std::process::Command::new("/bin/true").status().unwrap();
        let elapsed = start.elapsed();
        assert!(status.success());
        if i >= WARMUP {
            native.push(elapsed);
        }
    }
    let native_p50 = report("fork/exec /bin/true", native);
    println!(
        "ratio (wasm / fork+exec, p50): {:.3}",
        wasm_p50.as_secs_f64() / native_p50.as_secs_f64()
    );
}

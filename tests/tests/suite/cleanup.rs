//! The bundled `cleanup-old-logs` task on generated directory trees.

use housekeeper::manifest::{DirGrant, DirMode, Manifest};
use housekeeper::model::{ConfigValue, RunResult, RunStatus, Trigger};
use housekeeper::runtime::RunRequest;
use housekeeper_tests::{component, runtime, task_path};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const DAY: Duration = Duration::from_secs(86_400);

struct Logs {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    dir: PathBuf,
}

/// `app-N.log` of `N * 10` bytes, `N` days old, for N in 1..=10, plus files
/// that never match.
fn logs() -> Logs {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_owned();
    let dir = root.join("logs");
    std::fs::create_dir_all(dir.join("nested")).unwrap();
    for n in 1..=10u64 {
        file(&dir.join(format!("app-{n:02}.log")), n as usize * 10, n);
    }
    file(&dir.join("keep.txt"), 5, 100);
    file(&dir.join("nested/deep-old.log"), 7, 50);
    Logs {
        _tmp: tmp,
        root,
        dir,
    }
}

fn file(path: &Path, size: usize, age_days: u64) {
    std::fs::write(path, vec![b'x'; size]).unwrap();
    // An hour short of `age_days`, so a file of N days is within "N days".
    let when = SystemTime::now() - DAY * age_days as u32 + Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(when)
        .unwrap();
}

fn remaining(dir: &Path) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                pending.push(path);
            } else {
                names.insert(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    names
}

fn apps(range: impl IntoIterator<Item = u64>) -> BTreeSet<String> {
    range
        .into_iter()
        .map(|n| format!("app-{n:02}.log"))
        .collect()
}

fn others() -> BTreeSet<String> {
    ["keep.txt", "nested/deep-old.log"].map(String::from).into()
}

async fn cleanup(logs: &Logs, config: &[(&str, ConfigValue)], dry_run: bool) -> RunResult {
    let mut manifest = Manifest::implicit("cleanup-old-logs", "cleanup-old-logs.wasm");
    manifest.dirs = vec![DirGrant {
        host: logs.dir.clone(),
        guest: "/logs".into(),
        mode: DirMode::Rw,
    }];
    for (k, v) in config {
        manifest.config.insert((*k).into(), v.clone());
    }
    let mut request = RunRequest::from_manifest(&manifest, "run-1".into(), Trigger::Manual);
    request.dry_run = dry_run;
    runtime()
        .run(&component(&task_path("cleanup-old-logs")), request)
        .await
}

fn metric(result: &RunResult, name: &str) -> f64 {
    result
        .metrics
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no metric {name} in {result:#?}"))
        .value
}

fn int(i: i64) -> ConfigValue {
    ConfigValue::Integer(i)
}

#[tokio::test]
async fn age_policy_deletes_only_old_files() {
    let logs = logs();
    let result = cleanup(&logs, &[("max_age_days", int(5))], false).await;
    assert_eq!(result.status, RunStatus::Success, "{result:#?}");
    let expected: BTreeSet<_> = apps(1..=5).union(&others()).cloned().collect();
    assert_eq!(remaining(&logs.dir), expected);
    assert_eq!(metric(&result, "files_deleted"), 5.0);
    assert_eq!(
        metric(&result, "bytes_freed"),
        (60 + 70 + 80 + 90 + 100) as f64
    );
    assert_eq!(metric(&result, "files_kept"), 5.0);
}

#[tokio::test]
async fn count_policy_keeps_the_newest() {
    let logs = logs();
    let result = cleanup(&logs, &[("keep_newest", int(3))], false).await;
    assert_eq!(result.status, RunStatus::Success, "{result:#?}");
    let expected: BTreeSet<_> = apps(1..=3).union(&others()).cloned().collect();
    assert_eq!(remaining(&logs.dir), expected);
    assert_eq!(metric(&result, "files_deleted"), 7.0);
}

#[tokio::test]
async fn size_policy_deletes_oldest_first() {
    let logs = logs();
    // Newest first: 10, 20, 30, 40 = 100 bytes fit; adding 50 would not.
    let result = cleanup(&logs, &[("max_total_bytes", int(120))], false).await;
    assert_eq!(result.status, RunStatus::Success, "{result:#?}");
    let expected: BTreeSet<_> = apps(1..=4).union(&others()).cloned().collect();
    assert_eq!(remaining(&logs.dir), expected);
    assert_eq!(metric(&result, "files_kept"), 4.0);
}

#[tokio::test]
async fn policies_combine() {
    let logs = logs();
    // Age keeps 1..=8, count keeps 1..=6, size (<= 150) keeps 1..=5.
    let config = [
        ("max_age_days", int(8)),
        ("keep_newest", int(6)),
        ("max_total_bytes", int(150)),
    ];
    let result = cleanup(&logs, &config, false).await;
    assert_eq!(result.status, RunStatus::Success, "{result:#?}");
    let expected: BTreeSet<_> = apps(1..=5).union(&others()).cloned().collect();
    assert_eq!(remaining(&logs.dir), expected);
}

#[tokio::test]
async fn recursive_and_pattern_widen_the_selection() {
    let logs = logs();
    let config = [
        ("max_age_days", int(6)),
        ("recursive", ConfigValue::Boolean(true)),
    ];
    let result = cleanup(&logs, &config, false).await;
    assert_eq!(result.status, RunStatus::Success, "{result:#?}");
    let mut expected = apps(1..=6);
    expected.insert("keep.txt".into());
    assert_eq!(
        remaining(&logs.dir),
        expected,
        "nested/deep-old.log (7 days) goes too"
    );

    let logs = self::logs();
    let config = [
        ("max_age_days", int(0)),
        ("pattern", ConfigValue::Text("*.txt".into())),
    ];
    let result = cleanup(&logs, &config, false).await;
    assert_eq!(result.status, RunStatus::Success, "{result:#?}");
    assert!(!remaining(&logs.dir).contains("keep.txt"));
    assert_eq!(remaining(&logs.dir).len(), 11);
}

#[tokio::test]
async fn a_dry_run_reports_and_deletes_nothing() {
    let logs = logs();
    let before = remaining(&logs.dir);
    let config = [("max_age_days", int(5)), ("keep_newest", int(2))];
    let result = cleanup(&logs, &config, true).await;
    assert_eq!(result.status, RunStatus::Success, "{result:#?}");
    assert_eq!(remaining(&logs.dir), before);
    assert_eq!(metric(&result, "files_deleted"), 8.0);
    assert!(result.summary.unwrap().starts_with("would delete 8 files"));
    for n in 3..=10 {
        assert!(
            result
                .output
                .contains(&format!("would delete /logs/app-{n:02}.log")),
            "{}",
            result.output
        );
    }
    assert!(!result.output.contains("app-01.log"));
}

#[tokio::test]
async fn symlinks_are_neither_followed_nor_deleted() {
    let logs = logs();
    // An old file outside the grant, reachable through links that match.
    let outside = logs.root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    file(&outside.join("precious.log"), 10, 100);
    std::os::unix::fs::symlink(outside.join("precious.log"), logs.dir.join("link.log")).unwrap();
    std::os::unix::fs::symlink(&outside, logs.dir.join("linked-dir")).unwrap();

    let config = [
        ("max_age_days", int(0)),
        ("recursive", ConfigValue::Boolean(true)),
    ];
    let result = cleanup(&logs, &config, false).await;
    assert_eq!(result.status, RunStatus::Success, "{result:#?}");
    assert!(outside.join("precious.log").exists());
    assert!(logs.dir.join("link.log").symlink_metadata().is_ok());
    assert_eq!(metric(&result, "files_deleted"), 11.0);
}

#[tokio::test]
async fn without_a_rule_nothing_is_deleted_and_the_output_says_so() {
    let logs = logs();
    let before = remaining(&logs.dir);
    let result = cleanup(&logs, &[], false).await;
    assert_eq!(result.status, RunStatus::Success, "{result:#?}");
    assert_eq!(remaining(&logs.dir), before);
    assert!(result.output.contains("no retention rule set"));
}

#[tokio::test]
async fn bad_config_is_an_invalid_config_error_naming_the_key() {
    let logs = logs();
    for (key, value) in [
        ("max_age_days", ConfigValue::Text("a week".into())),
        ("keep_newest", int(-1)),
        ("recursive", ConfigValue::Text("maybe".into())),
        ("pattern", ConfigValue::Text("[".into())),
    ] {
        let result = cleanup(&logs, &[(key, value)], false).await;
        assert_eq!(result.status, RunStatus::Error, "{result:#?}");
        let error = result.error.unwrap();
        assert!(error.starts_with("invalid config:"), "{error}");
        assert!(error.contains(key) || key == "pattern", "{error}");
    }
    assert_eq!(remaining(&logs.dir).len(), 12);
}

#[tokio::test]
async fn a_directory_that_is_not_granted_is_an_error() {
    let logs = logs();
    let config = [
        ("dir", ConfigValue::Text("/var/log".into())),
        ("max_age_days", int(0)),
    ];
    let result = cleanup(&logs, &config, false).await;
    assert_eq!(result.status, RunStatus::Error, "{result:#?}");
    assert!(result.error.unwrap().contains("/var/log"));
}

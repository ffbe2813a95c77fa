//! The real `housekeeper` binary: `run` and `check`, their output and exit
//! codes.

use housekeeper_tests::{binary, fixture_path, task_path};
use std::path::Path;
use std::process::{Command, Output};

fn housekeeper(args: &[&str], tasks_dir: Option<&Path>) -> Output {
    // Runs are recorded in a store of this test process's own, never in a
    // database the environment points at.
    static DATA: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let data = DATA.get_or_init(|| tempfile::tempdir().unwrap());
    housekeeper_in(data.path(), args, tasks_dir)
}

/// `housekeeper` with its store in `data`.
fn housekeeper_in(data: &Path, args: &[&str], tasks_dir: Option<&Path>) -> Output {
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .env_remove("HOUSEKEEPER_TASKS_DIR")
        .env_remove("LOG_LEVEL")
        .env_remove("DATABASE_URL")
        .env_remove("DB_HOST")
        .env("HOUSEKEEPER_DATA_DIR", data);
    if let Some(dir) = tasks_dir {
        cmd.env("HOUSEKEEPER_TASKS_DIR", dir);
    }
    cmd.output().expect("housekeeper runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A tasks directory with cleanup-old-logs and a manifest granting `logs/`,
/// and a store of its own: tests that run the same task at once would
/// otherwise see each other's runs (and skip, by its overlap policy).
struct Setup {
    tmp: tempfile::TempDir,
    tasks: std::path::PathBuf,
    logs: std::path::PathBuf,
}

impl Setup {
    /// `housekeeper` with this setup's own store.
    fn housekeeper(&self, args: &[&str], tasks_dir: Option<&Path>) -> Output {
        housekeeper_in(&self.tmp.path().join("data"), args, tasks_dir)
    }
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let tasks = tmp.path().join("tasks.d");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&tasks).unwrap();
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::copy(
        task_path("cleanup-old-logs"),
        tasks.join("cleanup-old-logs.wasm"),
    )
    .unwrap();
    std::fs::write(
        tasks.join("app-logs.toml"),
        format!(
            r#"
name = "app-logs"
component = "cleanup-old-logs.wasm"
schedule = "0 3 * * *"

[[grants.dirs]]
host = "{}"
guest = "/logs"
mode = "rw"

[config]
keep_newest = 2
"#,
            logs.display()
        ),
    )
    .unwrap();
    for n in 0..5 {
        let path = logs.join(format!("{n}.log"));
        std::fs::write(&path, "x").unwrap();
        let when = std::time::SystemTime::now() - std::time::Duration::from_secs(3600 * n);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }
    Setup { tmp, tasks, logs }
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[test]
fn run_by_name_resolves_through_manifests_and_applies_grants() {
    let s = setup();
    let dry = s.housekeeper(&["run", "app-logs", "--dry-run"], Some(&s.tasks));
    assert!(dry.status.success(), "{}{}", stdout(&dry), stderr(&dry));
    assert!(stdout(&dry).contains("(dry run)"));
    assert!(
        stdout(&dry).contains("would delete 3 files"),
        "{}",
        stdout(&dry)
    );
    assert_eq!(count(&s.logs), 5);

    let real = s.housekeeper(
        &["run", "app-logs", "--tasks-dir", s.tasks.to_str().unwrap()],
        None,
    );
    assert!(real.status.success(), "{}{}", stdout(&real), stderr(&real));
    let out = stdout(&real);
    assert!(out.contains("status:    success"), "{out}");
    assert!(out.contains("files_deleted=3"), "{out}");
    assert_eq!(count(&s.logs), 2);
}

#[test]
fn config_overrides_apply_to_one_run() {
    let s = setup();
    let o = s.housekeeper(
        &["run", "app-logs", "--config", "keep_newest=4", "--json"],
        Some(&s.tasks),
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let json: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(json["status"], "success");
    assert_eq!(json["task_name"], "app-logs");
    assert_eq!(json["metrics"][0]["name"], "files_deleted");
    assert_eq!(json["metrics"][0]["value"], 1.0);
    assert_eq!(count(&s.logs), 4);

    let bad = s.housekeeper(
        &["run", "app-logs", "--config", "keep_newest"],
        Some(&s.tasks),
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("KEY=VALUE"), "{}", stderr(&bad));
}

#[test]
fn a_component_without_a_manifest_runs_with_no_grants() {
    let s = setup();
    let o = s.housekeeper(
        &[
            "run",
            task_path("cleanup-old-logs").to_str().unwrap(),
            "--config",
            "max_age_days=0",
        ],
        Some(&s.tasks),
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("status:    error"));
    assert!(stdout(&o).contains("cannot read /logs"), "{}", stdout(&o));
    assert_eq!(count(&s.logs), 5);
}

#[test]
fn a_component_file_with_a_sidecar_manifest_uses_it() {
    let s = setup();
    std::fs::copy(
        s.tasks.join("app-logs.toml"),
        s.tasks.join("cleanup-old-logs.toml"),
    )
    .unwrap();
    let path = s.tasks.join("cleanup-old-logs.wasm");
    let o = s.housekeeper(&["run", path.to_str().unwrap()], None);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(count(&s.logs), 2);
}

#[test]
fn exit_codes_name_the_outcome() {
    let hostile = fixture_path("hostile");
    let h = hostile.to_str().unwrap();
    for (mode, code, status) in [
        ("fail", 1, "error"),
        ("panic", 3, "trapped"),
        ("memory-bomb", 6, "out_of_memory"),
    ] {
        let o = housekeeper(&["run", h, "--config", &format!("mode={mode}")], None);
        assert_eq!(o.status.code(), Some(code), "{mode}: {}", stdout(&o));
        assert!(
            stdout(&o).contains(&format!("status:    {status}")),
            "{}",
            stdout(&o)
        );
    }

    // Fuel and deadline come from a manifest next to a copy of the component.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("spinner.wasm");
    std::fs::copy(&hostile, &copy).unwrap();
    std::fs::write(
        tmp.path().join("spinner.toml"),
        "timeout = \"200ms\"\n[limits]\nfuel = 1_000_000_000_000\n[config]\nmode = \"spin\"",
    )
    .unwrap();
    let o = housekeeper(&["run", copy.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(4), "{}", stdout(&o));
    std::fs::write(
        tmp.path().join("spinner.toml"),
        "[limits]\nfuel = 10_000_000\n[config]\nmode = \"spin\"",
    )
    .unwrap();
    let o = housekeeper(&["run", copy.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(5), "{}", stdout(&o));
}

#[test]
fn unknown_tasks_and_bad_files_fail_clearly() {
    let s = setup();
    let o = s.housekeeper(&["run", "nope"], Some(&s.tasks));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no task named \"nope\""),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("app-logs"), "{}", stderr(&o));

    let o = s.housekeeper(&["run", "missing.wasm"], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("missing.wasm does not exist"),
        "{}",
        stderr(&o)
    );

    std::fs::write(s.tasks.join("broken.toml"), "schedule = \"every day\"").unwrap();
    let o = s.housekeeper(&["run", "broken"], Some(&s.tasks));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("broken.toml"), "{}", stderr(&o));
    assert!(stderr(&o).contains("`schedule`"), "{}", stderr(&o));
}

#[test]
fn not_a_task_is_refused_by_run_and_check() {
    let tmp = tempfile::tempdir().unwrap();
    let core = tmp.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let random = tmp.path().join("random.wasm");
    std::fs::write(
        &random,
        (0..4096u32)
            .map(|i| (i * 7919 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let wrong = fixture_path("wrong-world");
    for (path, needle) in [
        (core.as_path(), "core WebAssembly module, not a component"),
        (random.as_path(), "is not a WebAssembly file"),
        (wrong.as_path(), "is not a housekeeper task"),
    ] {
        for command in ["run", "check"] {
            let o = housekeeper(&[command, path.to_str().unwrap()], None);
            assert_eq!(o.status.code(), Some(2), "{command} {}", path.display());
            let all = stdout(&o) + &stderr(&o);
            assert!(all.contains(needle), "{command} {}: {all}", path.display());
        }
    }
}

#[test]
fn check_prints_describe_and_grants_for_a_directory() {
    let s = setup();
    let o = s.housekeeper(&["check", s.tasks.to_str().unwrap()], None);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(out.contains("ok   app-logs"), "{out}");
    assert!(
        out.contains("Deletes log files by age, count and total size"),
        "{out}"
    );
    assert!(out.contains("schedule:     0 3 * * *"), "{out}");
    assert!(
        out.contains(&format!("grants dir:   {} -> /logs (rw)", s.logs.display())),
        "{out}"
    );

    // One bad manifest and one component whose describe() loops: both named.
    std::fs::write(
        s.tasks.join("typo.toml"),
        "component = \"cleanup-old-logs.wasm\"\nretention = 3",
    )
    .unwrap();
    std::fs::copy(
        fixture_path("describe-loop"),
        s.tasks.join("describe-loop.wasm"),
    )
    .unwrap();
    let o = s.housekeeper(&["check", s.tasks.to_str().unwrap()], None);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.contains("ok   app-logs"), "{out}");
    assert!(
        out.contains("typo.toml") && out.contains("retention"),
        "{out}"
    );
    assert!(
        out.contains("FAIL describe-loop: describe() failed"),
        "{out}"
    );
}

#[test]
fn check_a_single_manifest_or_component() {
    let s = setup();
    let o = s.housekeeper(
        &["check", s.tasks.join("app-logs.toml").to_str().unwrap()],
        None,
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("ok   app-logs"));
    let o = s.housekeeper(&["check", fixture_path("noop").to_str().unwrap()], None);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("manifest:     (none: no grants)"));
}

#[test]
fn help_is_available_everywhere() {
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["check", "--help"],
    ] {
        let o = housekeeper(&args, None);
        assert!(o.status.success());
        assert!(stdout(&o).contains("Usage: housekeeper"));
    }
    let o = housekeeper(&["run", "--help"], None);
    assert!(stdout(&o).contains("HOUSEKEEPER_TASKS_DIR"));
}

#[test]
fn runs_and_tasks_read_what_run_recorded() {
    let s = setup();
    let o = s.housekeeper(&["run", "app-logs", "--dry-run"], Some(&s.tasks));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.housekeeper(&["runs", "app-logs", "--json"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let runs: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let run = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["dry_run"] == true)
        .expect("the dry run is recorded");
    assert_eq!(run["status"], "success");
    assert_eq!(run["triggered_by"], "cli");
    assert_eq!(run["metrics"]["files_deleted"], 3.0);

    let o = s.housekeeper(&["runs", "app-logs", "--limit", "1"], None);
    assert!(stdout(&o).contains("cli"), "{}", stdout(&o));

    let o = s.housekeeper(&["tasks"], Some(&s.tasks));
    assert!(o.status.success(), "{}", stderr(&o));
    let line = stdout(&o)
        .lines()
        .find(|l| l.starts_with("app-logs"))
        .unwrap()
        .to_owned();
    assert!(line.contains("0 3 * * *"), "{line}");
    assert!(line.contains("Etc/UTC"), "{line}");
    assert!(line.contains("yes"), "{line}");
    assert!(line.ends_with("success"), "{line}");

    let o = s.housekeeper(&["runs", "app-logs", "--limit", "0"], None);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn compiling_is_bounded_in_size_memory_and_time() {
    let tmp = tempfile::tempdir().unwrap();
    let bomb = tmp.path().join("bomb.wasm");
    std::fs::write(&bomb, housekeeper_tests::compile_bomb(300_000)).unwrap();
    let bomb = bomb.to_str().unwrap();
    for (variable, value, needle) in [
        (
            "HOUSEKEEPER_MAX_COMPONENT_SIZE",
            "64KiB",
            "more than the 65536 a component may have (HOUSEKEEPER_MAX_COMPONENT_SIZE)",
        ),
        (
            "HOUSEKEEPER_COMPILE_MEMORY",
            "64MiB",
            "compiling needed more than 64 MiB of memory (HOUSEKEEPER_COMPILE_MEMORY)",
        ),
        (
            "HOUSEKEEPER_COMPILE_TIMEOUT",
            "1ms",
            "compiling took longer than 1ms (HOUSEKEEPER_COMPILE_TIMEOUT)",
        ),
    ] {
        for command in ["run", "check"] {
            let o = Command::new(binary())
                .args([command, bomb])
                .env_remove("DATABASE_URL")
                .env_remove("DB_HOST")
                .env("HOUSEKEEPER_DATA_DIR", tmp.path().join("data"))
                .env(variable, value)
                .output()
                .unwrap();
            let all = stdout(&o) + &stderr(&o);
            assert_eq!(o.status.code(), Some(2), "{command} {variable}: {all}");
            assert!(all.contains(needle), "{command} {variable}: {all}");
        }
    }
}

#[test]
fn a_task_s_text_reaches_the_terminal_escaped() {
    let o = Command::new(binary())
        .args([
            "run",
            fixture_path("oversize").to_str().unwrap(),
            "--no-record",
        ])
        .env_remove("DATABASE_URL")
        .env_remove("DB_HOST")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(!out.contains('\x1b') && !out.contains('\x07'), "{out:?}");
    assert!(
        out.contains("\\x1b[2J\\x1b]0;owned\\x07"),
        "{}",
        &out[..400.min(out.len())]
    );
    let check = Command::new(binary())
        .args(["check", fixture_path("oversize").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!stdout(&check).contains('\x1b'));
}

/// A component without a manifest is named after its file, which whoever
/// drops the file spells: a name that is not a task name (escapes, line
/// breaks, invisible characters) is a load problem, printed escaped, never
/// a task; `check` prints every path and name of a manifest escaped too.
#[test]
fn names_taken_from_files_are_held_to_the_task_name_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let tasks = tmp.path().join("tasks.d");
    std::fs::create_dir_all(&tasks).unwrap();
    for name in [
        "bad\x1b[31mRED",
        "forged\nok   other-task",
        "soft\u{ad}hyphen",
        "tag\u{e0041}",
        ".hidden",
    ] {
        std::fs::copy(fixture_path("noop"), tasks.join(format!("{name}.wasm"))).unwrap();
    }
    std::fs::copy(fixture_path("noop"), tasks.join("fine.wasm")).unwrap();
    let grant = tmp.path().join("g\x1b[32mG");
    std::fs::create_dir_all(&grant).unwrap();
    std::fs::copy(fixture_path("noop"), tasks.join("granted.wasm")).unwrap();
    std::fs::write(
        tasks.join("granted.toml"),
        format!(
            "[[grants.dirs]]\nhost = \"{}\"\nguest = \"/d\\u001b[33mY\"\nmode = \"ro\"\n",
            grant.display().to_string().replace('\x1b', "\\u001b")
        ),
    )
    .unwrap();
    for args in [&["tasks"][..], &["check", tasks.to_str().unwrap()]] {
        let o = housekeeper(args, Some(&tasks));
        let all = stdout(&o) + &stderr(&o);
        assert!(!all.contains('\x1b'), "{args:?}: {all:?}");
        assert!(
            !all.contains('\u{ad}') && !all.contains('\u{e0041}'),
            "{all:?}"
        );
        assert!(
            !all.lines().any(|l| l.starts_with("ok   other-task")),
            "{all}"
        );
        assert!(all.contains("fine"), "{all}");
    }
    let o = housekeeper(&["check", tasks.to_str().unwrap()], Some(&tasks));
    let out = stdout(&o);
    for needle in [
        "bad\\x1b[31mRED.wasm",
        "forged\\x0aok",
        "soft\\u{ad}hyphen",
        "tag\\u{e0041}",
        ".hidden.wasm",
        "g\\x1b[32mG -> /d\\x1b[33mY",
    ] {
        assert!(out.contains(needle), "{needle}: {out}");
    }
    assert_eq!(out.matches("invalid task name").count(), 5, "{out}");
    let o = housekeeper(&["run", "bad\x1b[31mRED"], Some(&tasks));
    assert_eq!(o.status.code(), Some(2));
    assert!(!stderr(&o).contains('\x1b'), "{:?}", stderr(&o));
    let file = tasks.join("bad\x1b[31mRED.wasm");
    let o = housekeeper(&["run", file.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("invalid task name"), "{:?}", stderr(&o));
}

/// A `housekeeper run` killed mid-run leaves its run `running` under a
/// lease no one renews: once the lease has expired, the next `run` of the
/// task records it interrupted and goes ahead instead of refusing.
#[test]
fn a_killed_run_does_not_hold_its_task_past_its_lease() {
    let tmp = tempfile::tempdir().unwrap();
    let tasks = tmp.path().join("tasks.d");
    std::fs::create_dir_all(&tasks).unwrap();
    std::fs::copy(fixture_path("witness"), tasks.join("slow.wasm")).unwrap();
    std::fs::write(tasks.join("slow.toml"), "[config]\nsleep_ms = 60000\n").unwrap();
    let data = tmp.path().join("data");
    let command = || {
        let mut cmd = Command::new(binary());
        cmd.env_remove("DATABASE_URL")
            .env_remove("DB_HOST")
            .env("HOUSEKEEPER_TASKS_DIR", &tasks)
            .env("HOUSEKEEPER_DATA_DIR", &data)
            .env("HOUSEKEEPER_LEASE", "3s");
        cmd
    };
    let mut killed = housekeeper_tests::KillOnDrop(
        command()
            .args(["run", "slow"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let db = data.join("housekeeper.db");
    housekeeper_tests::wait_until(
        "the run to be recorded",
        std::time::Duration::from_secs(30),
        || {
            let o = command().args(["runs", "slow", "--json"]).output().unwrap();
            db.exists() && stdout(&o).contains("\"running\"")
        },
    );
    killed.0.kill().unwrap();
    killed.0.wait().unwrap();
    // At once, the lease still holds the task.
    let o = command()
        .args(["run", "slow", "--config", "sleep_ms=0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(7), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("is running"), "{}", stderr(&o));
    housekeeper_tests::wait_until(
        "the lease to expire",
        std::time::Duration::from_secs(30),
        || {
            let o = command()
                .args(["run", "slow", "--config", "sleep_ms=0"])
                .output()
                .unwrap();
            o.status.success()
        },
    );
    let o = command().args(["runs", "slow", "--json"]).output().unwrap();
    let runs: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let statuses: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert!(statuses.contains(&"interrupted"), "{statuses:?}");
    assert!(statuses.contains(&"success"), "{statuses:?}");
    assert!(!statuses.contains(&"running"), "{statuses:?}");
}

#[test]
fn run_returns_when_the_task_opens_a_fifo() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("spool");
    std::fs::create_dir_all(&data).unwrap();
    housekeeper_tests::mknod(&data.join("fifo"), rustix::fs::FileType::Fifo, 0, 0);
    let copy = tmp.path().join("reader.wasm");
    std::fs::copy(fixture_path("fs-hog"), &copy).unwrap();
    std::fs::write(
        tmp.path().join("reader.toml"),
        format!(
            "timeout = \"5s\"\n\n[[grants.dirs]]\nhost = \"{}\"\nguest = \"/data\"\nmode = \"rw\"\n\n[config]\nmode = \"open\"\npath = \"/data/fifo\"\n",
            data.display()
        ),
    )
    .unwrap();
    // Run it in the background and wait a bounded time: a run blocked in
    // open(2) would never return.
    let mut child = Command::new(binary())
        .args(["run", copy.to_str().unwrap(), "--no-record"])
        .env_remove("HOUSEKEEPER_TASKS_DIR")
        .env_remove("DATABASE_URL")
        .env_remove("DB_HOST")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("`housekeeper run` did not return");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("refused to open") && stdout(&o).contains("a FIFO"),
        "{}",
        stdout(&o)
    );
}

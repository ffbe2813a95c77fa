//! The command line: argument definitions and the commands that do not need
//! the service (`run`, `check`, `tasks`, `runs`, `db adopt`).

use crate::catalog::{Catalog, TaskEntry};
use crate::config::{CompileArgs, DbArgs, ServeArgs};
use crate::manifest::Overlap;
use crate::model::{ConfigValue, RunResult, RunStatus, Trigger};
use crate::runtime::{RunRequest, Runtime, RuntimeOptions, TaskComponent};
use crate::schedule::next_fire;
use crate::store::adopt::{Finding, Plan};
use crate::store::{Claim, NewRun, Store, is_postgres};
use crate::terminal::{escape, escape_lines};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "housekeeper",
    version,
    about = "Runs database and file-system maintenance tasks as sandboxed WebAssembly components"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: schedule the tasks directory, record runs, serve HTTP.
    Serve(ServeArgs),
    /// Run one task once, in the foreground; the exit code tells the outcome.
    Run(RunArgs),
    /// List the tasks with their schedule, state, next fire and last status.
    Tasks(TasksArgs),
    /// Show a task's recent runs from the store.
    Runs(RunsArgs),
    /// Validate components and manifests and print what each task says about itself.
    Check(CheckArgs),
    /// The store's own database.
    #[command(subcommand)]
    Db(DbCommand),
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Take over the reference service's PostgreSQL tables in place, as any
    /// command that opens the store does, then apply the migrations.
    Adopt(AdoptArgs),
    /// Print the SQL that gives each task with a PostgreSQL grant its own
    /// role, holding exactly what its manifest grants.
    Roles(RolesArgs),
}

#[derive(Debug, clap::Args)]
pub struct RolesArgs {
    /// Directory of task components and manifests.
    #[arg(long, env = "HOUSEKEEPER_TASKS_DIR", default_value = "./tasks.d")]
    pub tasks_dir: PathBuf,
    /// Also run the statements, as the connection's login role.
    #[arg(long)]
    pub apply: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, clap::Args)]
pub struct AdoptArgs {
    /// Print what was found and the statements that would run; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A task name from the tasks directory, or a path to a `.wasm` component.
    pub task: String,
    /// Directory of task components and manifests.
    #[arg(long, env = "HOUSEKEEPER_TASKS_DIR", default_value = "./tasks.d")]
    pub tasks_dir: PathBuf,
    /// Report what would change without changing anything (granted directories become read-only).
    #[arg(long)]
    pub dry_run: bool,
    /// Set a `[config]` value for this run, overriding the manifest (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_config_pair)]
    pub config: Vec<(String, ConfigValue)>,
    /// Print the result as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Do not record the run in the store.
    #[arg(long)]
    pub no_record: bool,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub compile: CompileArgs,
}

#[derive(Debug, clap::Args)]
pub struct TasksArgs {
    /// Directory of task components and manifests.
    #[arg(long, env = "HOUSEKEEPER_TASKS_DIR", default_value = "./tasks.d")]
    pub tasks_dir: PathBuf,
    /// Time zone for schedules whose manifest names none (IANA).
    #[arg(long, env = "TIMEZONE", value_name = "TIMEZONE", default_value = "Etc/UTC",
          value_parser = crate::schedule::parse_timezone)]
    pub timezone: chrono_tz::Tz,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub compile: CompileArgs,
}

#[derive(Debug, clap::Args)]
pub struct RunsArgs {
    /// The task's name.
    pub task: String,
    /// How many runs, newest first.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub limit: i64,
    /// Print the runs as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// A `.wasm` component, a `.toml` manifest, or a tasks directory.
    pub path: PathBuf,
    #[command(flatten)]
    pub compile: CompileArgs,
}

fn parse_config_pair(text: &str) -> Result<(String, ConfigValue), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("empty key in {text:?}"));
    }
    Ok((key.to_owned(), ConfigValue::from_cli(value)))
}

/// Exit code for a finished run: 0 only for success. 2 is left to usage
/// and loading errors.
pub fn exit_code(status: RunStatus) -> u8 {
    match status {
        RunStatus::Success => 0,
        RunStatus::Error => 1,
        RunStatus::Trapped => 3,
        RunStatus::Timeout => 4,
        RunStatus::OutOfFuel => 5,
        RunStatus::OutOfMemory => 6,
        RunStatus::Skipped | RunStatus::Cancelled | RunStatus::Interrupted | RunStatus::Running => {
            7
        }
    }
}

/// Exit code when the task could not even be loaded.
pub const EXIT_LOAD_ERROR: u8 = 2;

/// Runs every command but `serve`, which `main` starts with its listener
/// and shutdown signal.
pub async fn execute(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(_) => fail("serve is started by main"),
        Command::Run(args) => run(args).await,
        Command::Check(args) => check(args).await,
        Command::Tasks(args) => tasks(args).await,
        Command::Runs(args) => runs(args).await,
        Command::Db(DbCommand::Adopt(args)) => adopt(args).await,
        Command::Db(DbCommand::Roles(args)) => roles(args).await,
    }
}

async fn open_store(db: &DbArgs) -> Result<Store, ExitCode> {
    db.open().await.map_err(|e| {
        fail(format!(
            "cannot open the store at {}: {e:#}",
            redact(&db.url())
        ))
    })
}

/// A database URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(EXIT_LOAD_ERROR)
}

fn runtime(compile: &CompileArgs) -> Result<Runtime, ExitCode> {
    let compile = compile.limits().map_err(|e| fail(format!("{e:#}")))?;
    runtime_with(RuntimeOptions {
        compile,
        ..RuntimeOptions::default()
    })
}

fn runtime_with(options: RuntimeOptions) -> Result<Runtime, ExitCode> {
    Runtime::new(options).map_err(|e| fail(format!("cannot start the WebAssembly runtime: {e:#}")))
}

/// Finds the task `spec` names: a `.wasm` path, or a name in the tasks dir.
pub fn resolve_task(spec: &str, tasks_dir: &Path) -> Result<TaskEntry, String> {
    let as_path = Path::new(spec);
    if spec.ends_with(".wasm") || as_path.is_file() {
        if !as_path.is_file() {
            return Err(format!("component file {spec} does not exist"));
        }
        return TaskEntry::for_component_file(as_path).map_err(|e| e.to_string());
    }
    let catalog = Catalog::scan(tasks_dir)
        .map_err(|e| format!("cannot read tasks directory {}: {e}", tasks_dir.display()))?;
    catalog.get(spec).cloned()
}

async fn load(runtime: &Runtime, path: &Path) -> Result<TaskComponent, String> {
    let runtime = runtime.clone();
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || runtime.load_file(&path))
        .await
        .map_err(|e| format!("compiling panicked: {e}"))?
        .map_err(|e| e.to_string())
}

async fn run(args: RunArgs) -> ExitCode {
    let task = match resolve_task(&args.task, &args.tasks_dir) {
        Ok(task) => task,
        Err(e) => return fail(e),
    };
    let options = match args.db.connections() {
        Ok(connections) => RuntimeOptions {
            connections,
            sql: args.db.sql_limits(),
            ..RuntimeOptions::default()
        },
        Err(e) => return fail(format!("{e:#}")),
    };
    let options = match args.compile.limits() {
        Ok(compile) => RuntimeOptions { compile, ..options },
        Err(e) => return fail(format!("{e:#}")),
    };
    // Compiled code is cached beside the run history; without a usable data
    // directory the task is compiled afresh.
    let cached = Runtime::new(RuntimeOptions {
        cache_dir: Some(args.db.data_dir.join("cache")),
        ..options.clone()
    });
    let runtime = match cached {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "no compile cache");
            match runtime_with(options) {
                Ok(r) => r,
                Err(code) => return code,
            }
        }
    };
    let component = match load(&runtime, &task.component_path).await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    // The run is recorded like any other (triggered_by = cli). If the store
    // cannot be opened the task still runs: say so, do not hide it.
    let store = if args.no_record {
        None
    } else {
        match args.db.open().await {
            Ok(store) => Some(store),
            Err(e) => {
                eprintln!(
                    "warning: not recording this run: cannot open the store at {}: {e:#}",
                    redact(&args.db.url())
                );
                None
            }
        }
    };
    let mut record = None;
    if let Some(store) = &store {
        let new = NewRun {
            task_name: task.name(),
            triggered_by: Trigger::Cli,
            scheduled_for: None,
            dry_run: args.dry_run,
            component_hash: Some(component.hash()),
            exclusive: task.manifest.overlap != Overlap::Allow,
            attempt: 0,
        };
        match store.begin_run(&new).await {
            Ok(Claim::Won(lease)) => record = Some(lease),
            Ok(Claim::Busy(holder)) => {
                eprintln!(
                    "skipped: {} is running (run {} on replica {}) and its overlap policy is {}",
                    escape(task.name()),
                    holder.run_id,
                    escape(&holder.replica),
                    format!("{:?}", task.manifest.overlap).to_lowercase()
                );
                return ExitCode::from(exit_code(RunStatus::Skipped));
            }
            Ok(other) => eprintln!("warning: not recording this run: {other:?}"),
            Err(e) => eprintln!("warning: not recording this run: {e:#}"),
        }
    }
    let run_id = record
        .map(|lease| lease.run_id.to_string())
        .unwrap_or_else(new_run_id);
    let mut request = RunRequest::from_manifest(&task.manifest, run_id, Trigger::Cli);
    request.dry_run = args.dry_run;
    request.config.extend(args.config);
    // The lease is renewed while the run goes on, as `serve` does, so that
    // no replica takes this run for a dead one.
    let renew = match (&store, record) {
        (Some(store), Some(lease)) => {
            let store = store.clone();
            Some(tokio::spawn(async move {
                let mut every = tokio::time::interval(store.lease_length() / 3);
                every.tick().await;
                loop {
                    every.tick().await;
                    if let Err(e) = store.heartbeat(lease).await {
                        eprintln!("warning: cannot renew the run's lease: {e:#}");
                    }
                }
            }))
        }
        _ => None,
    };
    let result = runtime.run(&component, request).await;
    if let Some(renew) = renew {
        renew.abort();
    }
    if let (Some(store), Some(lease)) = (&store, record) {
        match store.finish_run(lease, &result).await {
            Ok(true) => {}
            Ok(false) => eprintln!(
                "warning: the run's result was not recorded: its lease expired and the run was recorded interrupted"
            ),
            Err(e) => eprintln!("warning: the run's result was not recorded: {e:#}"),
        }
        let history = &task.manifest.history;
        let _ = store
            .prune(task.name(), history.keep_days, history.keep_last)
            .await;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&result).expect("run results serialize")
        );
    } else {
        print_result(&result);
    }
    ExitCode::from(exit_code(result.status))
}

pub fn new_run_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn print_result(r: &RunResult) {
    println!("task:      {}", r.task_name);
    println!(
        "run:       {}{}",
        r.run_id,
        if r.dry_run { " (dry run)" } else { "" }
    );
    println!("status:    {}", r.status);
    println!("duration:  {} ms", r.duration_ms);
    if let Some(summary) = &r.summary {
        println!("summary:   {}", escape(summary));
    }
    if let Some(error) = &r.error {
        println!("error:     {}", escape_lines(error));
    }
    if !r.metrics.is_empty() {
        let metrics: Vec<String> = r
            .metrics
            .iter()
            .map(|m| format!("{}={}", escape(&m.name), m.value))
            .collect();
        println!("metrics:   {}", metrics.join(" "));
    }
    println!("fuel used: {}", r.fuel_used);
    println!("component: sha256:{}", r.component_hash);
    if !r.output.is_empty() {
        println!("output:");
        for line in r.output.lines() {
            println!("  {}", escape(line));
        }
    }
}

async fn check(args: CheckArgs) -> ExitCode {
    let path = args.path;
    let tasks = if path.is_dir() {
        match Catalog::scan(&path) {
            Ok(catalog) => {
                let mut problems = 0;
                for problem in &catalog.problems {
                    println!(
                        "FAIL {}: {}",
                        problem.path.display(),
                        escape_lines(&problem.message)
                    );
                    problems += 1;
                }
                if catalog.tasks.is_empty() && problems == 0 {
                    return fail(format!("no tasks in {}", path.display()));
                }
                (catalog.tasks.into_values().collect::<Vec<_>>(), problems)
            }
            Err(e) => return fail(format!("cannot read {}: {e}", path.display())),
        }
    } else if path.extension().is_some_and(|e| e == "toml") {
        match crate::manifest::Manifest::load(&path) {
            Ok(manifest) => {
                let component_path = path
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join(&manifest.component);
                (
                    vec![TaskEntry {
                        manifest,
                        manifest_path: Some(path.clone()),
                        component_path,
                    }],
                    0,
                )
            }
            Err(e) => return fail(e),
        }
    } else {
        match resolve_task(&path.display().to_string(), Path::new(".")) {
            Ok(task) => (vec![task], 0),
            Err(e) => return fail(e),
        }
    };
    let (tasks, mut problems) = tasks;

    let runtime = match runtime(&args.compile) {
        Ok(r) => r,
        Err(code) => return code,
    };
    for task in &tasks {
        match check_one(&runtime, task).await {
            Ok(text) => println!("ok   {}\n{text}", task.name()),
            Err(e) => {
                println!("FAIL {}: {}", task.name(), escape_lines(&e));
                problems += 1;
            }
        }
    }
    if problems > 0 {
        eprintln!("{problems} problem(s) found");
        ExitCode::from(EXIT_LOAD_ERROR)
    } else {
        ExitCode::SUCCESS
    }
}

async fn check_one(runtime: &Runtime, task: &TaskEntry) -> Result<String, String> {
    // The same steps as the service's: compile (bounded), then describe().
    let guests = tokio::runtime::Handle::current();
    let (component, info) =
        crate::loader::load_component(runtime, &task.component_path, &guests).await?;
    let m = &task.manifest;
    let schedule = m
        .schedule
        .as_ref()
        .map(|s| s.as_str().to_owned())
        .or(info
            .default_schedule
            .as_deref()
            .map(|s| escape(s).into_owned()))
        .unwrap_or_else(|| "(none: manual only)".into());
    let mut lines = vec![
        format!(
            "  component:    {} (sha256:{})",
            task.component_path.display(),
            component.hash()
        ),
        format!(
            "  manifest:     {}",
            task.manifest_path
                .as_ref()
                .map_or("(none: no grants)".into(), |p| p.display().to_string())
        ),
        format!(
            "  describe():   {} {} - {}",
            escape(&info.name),
            escape(&info.version),
            escape(&info.description)
        ),
        format!("  schedule:     {schedule}"),
    ];
    if !info.capabilities.is_empty() {
        lines.push(format!(
            "  would like:   {}",
            escape(&info.capabilities.join(", "))
        ));
    }
    for dir in &m.dirs {
        lines.push(format!(
            "  grants dir:   {} -> {} ({})",
            dir.host.display(),
            dir.guest,
            dir.mode
        ));
    }
    if let Some(db) = &m.database {
        for (table, verbs) in &db.tables {
            let verbs: Vec<&str> = verbs.iter().map(|v| v.as_str()).collect();
            lines.push(format!(
                "  grants sql:   {}.{table} [{}]",
                db.connection,
                verbs.join(", ")
            ));
        }
    }
    Ok(lines.join("\n"))
}

async fn tasks(args: TasksArgs) -> ExitCode {
    let catalog = match Catalog::scan(&args.tasks_dir) {
        Ok(c) => c,
        Err(e) => {
            return fail(format!(
                "cannot read tasks directory {}: {e}",
                args.tasks_dir.display()
            ));
        }
    };
    let store = match open_store(&args.db).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let (settings, stats) = match (store.settings().await, store.stats().await) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return fail(format!("cannot read the store: {e:#}")),
    };
    let runtime = match runtime(&args.compile) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let now = chrono::Utc::now();
    println!(
        "{:<36} {:<16} {:<16} {:<8} {:<22} {}",
        "NAME", "SCHEDULE", "TIMEZONE", "ENABLED", "NEXT FIRE (UTC)", "LAST STATUS"
    );
    for (name, entry) in &catalog.tasks {
        let info = match load(&runtime, &entry.component_path).await {
            Ok(c) => runtime.describe(&c).await.ok(),
            Err(e) => {
                println!("{name:<36} load error: {}", escape(&e));
                continue;
            }
        };
        let m = &entry.manifest;
        let schedule = m.schedule.clone().or_else(|| {
            info.as_ref()
                .and_then(|i| i.default_schedule.as_deref())
                .and_then(|s| crate::schedule::Schedule::parse(s).ok())
        });
        let tz = m.timezone.unwrap_or(args.timezone);
        let enabled = settings.get(name).map(|s| s.enabled).unwrap_or(m.enabled);
        let next = match (&schedule, enabled) {
            (Some(s), true) => next_fire(s, tz, now)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_else(|| "never".into()),
            (Some(_), false) => "(disabled)".into(),
            (None, _) => "(manual only)".into(),
        };
        let last = stats
            .get(name)
            .and_then(|s| s.last_status)
            .map_or("-", RunStatus::as_str);
        println!(
            "{:<36} {:<16} {:<16} {:<8} {:<22} {}",
            name,
            schedule.as_ref().map(|s| s.as_str()).unwrap_or("-"),
            tz.name(),
            if enabled { "yes" } else { "no" },
            next,
            last
        );
    }
    for problem in &catalog.problems {
        println!(
            "load error: {}: {}",
            problem.path.display(),
            escape_lines(&problem.message)
        );
    }
    ExitCode::SUCCESS
}

async fn runs(args: RunsArgs) -> ExitCode {
    let store = match open_store(&args.db).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let runs = match store.runs(&args.task, args.limit).await {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot read the store: {e:#}")),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&runs).expect("runs serialize")
        );
        return ExitCode::SUCCESS;
    }
    if runs.is_empty() {
        eprintln!("no runs recorded for {:?}", args.task);
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<8} {:<20} {:<14} {:>10} {:<10} {}",
        "ID", "STARTED (UTC)", "STATUS", "MS", "TRIGGER", "ERROR"
    );
    for r in runs {
        println!(
            "{:<8} {:<20} {:<14} {:>10} {:<10} {}",
            r.id,
            r.started_at.format("%Y-%m-%d %H:%M:%S"),
            r.status,
            r.duration_ms
                .map(|d| d.to_string())
                .unwrap_or_else(|| "-".into()),
            r.triggered_by,
            escape(
                r.error
                    .as_deref()
                    .and_then(|e| e.lines().next())
                    .unwrap_or("")
            )
        );
    }
    ExitCode::SUCCESS
}

async fn adopt(args: AdoptArgs) -> ExitCode {
    let url = args.db.url();
    if !is_postgres(&url) {
        return fail(format!(
            "the store at {} is not PostgreSQL: set DATABASE_URL or DB_HOST to the reference service's database",
            redact(&url)
        ));
    }
    let adoption = match args.db.adopt_options() {
        Ok(a) => a,
        Err(e) => return fail(format!("{e:#}")),
    };
    let options = args.db.store_options();
    let finding = if args.dry_run {
        Store::inspect_reference(&url, &options, &adoption).await
    } else {
        Store::adopt_reference(&url, &options, &adoption).await
    };
    let finding = match finding {
        Ok(f) => f,
        Err(e) => return fail(format!("{e:#}")),
    };
    match &finding {
        Finding::Fresh => println!(
            "nothing to take over: {} has none of the reference service's tables",
            redact(&url)
        ),
        Finding::Migrated => println!(
            "nothing to take over: housekeeper's migrations are already recorded in {}",
            redact(&url)
        ),
        Finding::Reference(plan) => print_plan(plan, &url, args.dry_run),
    }
    if args.dry_run {
        return ExitCode::SUCCESS;
    }
    match args.db.open().await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => fail(format!("cannot open the store at {}: {e:#}", redact(&url))),
    }
}

async fn roles(args: RolesArgs) -> ExitCode {
    use crate::capabilities::sql::roles;
    let connections = match args.db.connections() {
        Ok(c) => c,
        Err(e) => return fail(format!("{e:#}")),
    };
    let catalog = match Catalog::scan(&args.tasks_dir) {
        Ok(c) => c,
        Err(e) => {
            return fail(format!(
                "HOUSEKEEPER_TASKS_DIR={}: cannot read it: {e}",
                args.tasks_dir.display()
            ));
        }
    };
    for problem in &catalog.problems {
        eprintln!(
            "skipped {}: {}",
            problem.path.display(),
            escape(&problem.message)
        );
    }
    let mut failed = false;
    let mut any = false;
    for (name, entry) in &catalog.tasks {
        let Some(grant) = &entry.manifest.database else {
            continue;
        };
        let Some(connection) = connections.get(&grant.connection) else {
            eprintln!(
                "{}: connection `{}` is not configured here",
                escape(name),
                escape(&grant.connection)
            );
            failed = true;
            continue;
        };
        let Some(pool) = connection.postgres_pool() else {
            continue;
        };
        any = true;
        let report = roles::print(pool, name, &grant.tables, args.apply).await;
        match report {
            Ok(text) => print!("{}", escape_lines(&text)),
            Err(e) => {
                eprintln!("{}: {e:#}", escape(name));
                failed = true;
            }
        }
    }
    if !any && !failed {
        println!(
            "-- no task in {} grants a PostgreSQL connection",
            args.tasks_dir.display()
        );
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn print_plan(plan: &Plan, url: &str, dry_run: bool) {
    println!(
        "{} the reference service's tables in {}:",
        if dry_run {
            "would take over"
        } else {
            "took over"
        },
        redact(url)
    );
    // Task names and errors come from the reference database as they were.
    for line in plan.summary() {
        println!("  {}", escape(&line));
    }
    println!(
        "statements, in one transaction{}:",
        if dry_run { "" } else { " (committed)" }
    );
    for statement in &plan.statements {
        println!("{};", escape_lines(statement));
    }
    if dry_run {
        println!("dry run: nothing was changed");
    }
}

//! The command line: argument definitions and the commands that do not need
//! the service (`run`, `check`, `tasks`, `runs`, `db adopt`, `db roles`),
//! one submodule per command group, and what they share.

mod check;
mod db;
mod run;
mod tasks;

use crate::catalog::{Catalog, TaskEntry};
use crate::config::{CompileArgs, DbArgs, ServeArgs};
use crate::model::{ConfigValue, RunStatus};
use crate::runtime::{Runtime, RuntimeOptions, TaskComponent};
use crate::store::Store;
use check::check;
use clap::{Parser, Subcommand};
use db::{adopt, roles};
use run::run;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tasks::{runs, tasks};

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

pub fn new_run_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

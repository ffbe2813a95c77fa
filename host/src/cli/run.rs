//! `housekeeper run`: one run of one task, recorded in the store unless
//! told not to, and its result for people or as JSON.

use super::{RunArgs, exit_code, fail, load, new_run_id, redact, resolve_task, runtime_with};
use crate::manifest::Overlap;
use crate::model::{RunResult, RunStatus, Trigger};
use crate::runtime::{RunRequest, Runtime, RuntimeOptions};
use crate::store::{Claim, NewRun};
use crate::terminal::{escape, escape_lines};
use std::process::ExitCode;

pub(super) async fn run(args: RunArgs) -> ExitCode {
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
        let mut claim = store.begin_run(&new).await;
        if let Ok(Claim::Busy(_)) = claim {
            // The holder may be a run whose process died (a `housekeeper
            // run` killed, say) and whose lease has since expired: it is
            // recorded interrupted, as a replica's heartbeat would, and the
            // claim tried again.
            match store.reap(&|_| None).await {
                Ok(reaped) if !reaped.is_empty() => claim = store.begin_run(&new).await,
                Ok(_) => {}
                Err(e) => eprintln!("warning: cannot reap expired leases: {e:#}"),
            }
        }
        match claim {
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

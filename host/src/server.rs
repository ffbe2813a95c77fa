//! `housekeeper serve`: loads the tasks directory, opens the store, runs the
//! scheduler and serves HTTP until the shutdown future resolves, then drains.
//! It takes its listener, shutdown and reload requests from the caller
//! (`main.rs` turns signals into them), so it runs the same in a test.

use crate::api::{self, AppState};
use crate::capabilities::filesystem;
use crate::config::ServeArgs;
use crate::loader::LoadErrors;
use crate::metrics::Metrics;
use crate::reload::{Reloader, RescanCause};
use crate::runtime::{Runtime, RuntimeOptions};
use crate::scheduler::clock::DatabaseClock;
use crate::scheduler::{Scheduler, SchedulerConfig};
use futures_util::{Stream, StreamExt};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;

/// Runs the service on `listener` until `shutdown` resolves; then stops
/// scheduling, waits for running tasks up to the grace period, interrupts
/// the rest, and returns. Each item of `reloads` rescans the tasks
/// directory (`main` sends one on SIGHUP); the service installs no signal
/// handler of its own.
pub async fn run(
    args: ServeArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reloads: impl Stream<Item = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = args.db.open().await?;
    let _single = crate::store::lock_single_replica(&args.db.url())?;
    tracing::info!(
        database = store.backend_name(),
        replica = store.replica(),
        "store open"
    );

    // Guests run on their own workers so that their filesystem calls never
    // hold up the HTTP server or the scheduler.
    let guests = tokio::runtime::Builder::new_multi_thread()
        .thread_name("housekeeper-guest")
        .worker_threads(args.max_concurrent_runs.clamp(1, 16) as usize)
        .enable_all()
        .build()?;
    // Guests open files out of this process's own limit: raise it as far as
    // allowed, and keep half of it for the service itself.
    let open_files = filesystem::raise_open_file_limit().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot raise the open-file limit (RLIMIT_NOFILE)");
        rustix::process::getrlimit(rustix::process::Resource::Nofile).current
    });
    let descriptors_per_run = filesystem::descriptors_per_run(open_files, args.max_concurrent_runs);
    tracing::info!(
        ?open_files,
        ?descriptors_per_run,
        "open-file limit; each run holds at most its share"
    );
    let runtime = Runtime::new(RuntimeOptions {
        max_instances: (args.max_concurrent_runs + 16).max(64),
        descriptors_per_run,
        cache_dir: Some(args.db.data_dir.join("cache")),
        connections: args.db.connections()?,
        sql: args.db.sql_limits(),
        compile: args.compile.limits()?,
        ..RuntimeOptions::default()
    })?;
    // A tasks directory that cannot be read stops the start, naming it.
    std::fs::read_dir(&args.tasks_dir).map_err(|e| {
        anyhow::anyhow!(
            "HOUSEKEEPER_TASKS_DIR={}: cannot read it: {e}",
            args.tasks_dir.display()
        )
    })?;

    let metrics = Metrics::default();
    let runtime_for_reload = runtime.clone();
    let scheduler = Scheduler::new(
        Arc::new(runtime),
        store.clone(),
        Arc::new(DatabaseClock::default()),
        SchedulerConfig {
            max_concurrent_runs: args.max_concurrent_runs as usize,
            enabled: args.enabled,
            default_timezone: args.timezone,
            run_handle: Some(guests.handle().clone()),
            metrics: Some(metrics.clone()),
            heartbeat_interval: store.lease_length() / 3,
            ..SchedulerConfig::default()
        },
    );
    let load_errors: LoadErrors = Default::default();
    let reloader = Arc::new(Reloader::new(
        runtime_for_reload,
        guests.handle().clone(),
        args.tasks_dir.clone(),
        scheduler.clone(),
        load_errors.clone(),
        metrics.clone(),
    ));
    let stop_watching = tokio_util::sync::CancellationToken::new();
    // Loading runs beside the HTTP server: compiling (bounded by
    // HOUSEKEEPER_COMPILE_TIMEOUT) never keeps /health from answering.
    let startup = {
        let reloader = reloader.clone();
        let stop = stop_watching.clone();
        tokio::spawn(async move {
            if let Err(e) = reloader.load_and_start().await {
                tracing::error!(error = %format!("{e:#}"), "loading the tasks directory failed");
                return;
            }
            if let Err(e) = reloader.watch(stop) {
                tracing::error!(error = %format!("{e:#}"), "cannot watch the tasks directory; use SIGHUP or POST /api/housekeeper/reload");
            }
        })
    };
    let stop_loading = startup.abort_handle();
    {
        let reloader = reloader.clone();
        let stop = stop_watching.clone();
        tokio::spawn(async move {
            let mut reloads = std::pin::pin!(reloads);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    request = reloads.next() => {
                        if request.is_none() {
                            return;
                        }
                        if let Err(e) = reloader.reload(RescanCause::Signal).await {
                            tracing::error!(error = %format!("{e:#}"), "reload failed");
                        }
                    }
                }
            }
        });
    }

    // A reload asked of any replica sharing the database reaches this one
    // within a heartbeat.
    {
        let (reloader, store) = (reloader.clone(), store.clone());
        let stop = stop_watching.clone();
        tokio::spawn(async move {
            let mut seen = store.reload_generation().await.ok();
            let mut every = tokio::time::interval(store.lease_length() / 3);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = every.tick() => {}
                }
                let Ok(generation) = store.reload_generation().await else {
                    continue;
                };
                if seen.is_some_and(|s| s != generation) && reloader.loaded() {
                    if let Err(e) = reloader.reload(RescanCause::Cluster).await {
                        tracing::error!(error = %format!("{e:#}"), "reload failed");
                    }
                }
                seen = Some(generation);
            }
        });
    }

    let api_token = args.api_token.clone().filter(|t| !t.is_empty());
    let loopback = listener.local_addr()?.ip().is_loopback();
    if api_token.is_none() && !loopback {
        tracing::warn!(
            "HOUSEKEEPER_API_TOKEN is not set and the API listens beyond loopback: anyone who can reach it can trigger and toggle tasks"
        );
    }
    let state = AppState {
        store,
        scheduler: scheduler.clone(),
        metrics,
        started: Instant::now(),
        load_errors,
        reloader: Some(reloader),
        api_token: api_token.map(Arc::from),
        stats_cache: Default::default(),
    };
    let grace = args.shutdown_grace;
    let drain = async move {
        shutdown.await;
        // A first load still under way is dropped; the scheduler is not
        // started after this point.
        stop_loading.abort();
        stop_watching.cancel();
        tracing::info!(
            ?grace,
            "shutting down: no new runs; waiting for running tasks"
        );
        scheduler.shutdown(grace).await;
        tracing::info!("all runs finished or interrupted");
    };
    tracing::info!(address = %listener.local_addr()?, "listening");
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(drain)
        .await?;
    guests.shutdown_background();
    Ok(())
}

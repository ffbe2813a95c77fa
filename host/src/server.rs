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
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Json, Router};
use futures_util::{Stream, StreamExt};
use std::future::{Future, IntoFuture};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

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
    // Guests run on their own workers so that their filesystem calls never
    // hold up the HTTP server or the scheduler.
    let guests = tokio::runtime::Builder::new_multi_thread()
        .thread_name("housekeeper-guest")
        .worker_threads(args.max_concurrent_runs.clamp(1, 16) as usize)
        .enable_all()
        .build()?;
    // Dropped on every way out of this function, including an error, where
    // dropping a runtime inside async code would panic.
    let guests = GuestRuntime(Some(guests));
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

    // HTTP answers from here on: `/health` says the service is up while
    // it waits for its database, `/ready` and the API answer 503 until the
    // service is ready to take them.
    let app: Arc<OnceLock<Router>> = Arc::default();
    let phase: Phase = Arc::new(std::sync::RwLock::new("waiting for the database"));
    let shutting_down = CancellationToken::new();
    {
        let shutting_down = shutting_down.clone();
        tokio::spawn(async move {
            shutdown.await;
            shutting_down.cancel();
        });
    }
    let drained = CancellationToken::new();
    let address = listener.local_addr()?;
    tracing::info!(%address, "listening");
    // Said with the address, before anything else can take long.
    let api_token = args.api_token.clone().filter(|t| !t.is_empty());
    if api_token.is_none() && !address.ip().is_loopback() {
        tracing::warn!(
            "HOUSEKEEPER_API_TOKEN is not set and the API listens beyond loopback: anyone who can reach it can trigger and toggle tasks"
        );
    }
    let http = {
        let drained = drained.clone();
        tokio::spawn(
            axum::serve(listener, front(app.clone(), phase.clone()))
                .with_graceful_shutdown(async move { drained.cancelled().await })
                .into_future(),
        )
    };
    let stop_http = async |result: anyhow::Result<()>| {
        drained.cancel();
        http.await??;
        result
    };

    let url = args.db.url();
    let store = tokio::select! {
        store = open_store(&args) => store,
        _ = shutting_down.cancelled() => return stop_http(Ok(())).await,
    };
    let store = match store {
        Ok(store) => store,
        Err(e) => return stop_http(Err(e)).await,
    };
    let _single = match crate::store::lock_single_replica(&url) {
        Ok(lock) => lock,
        Err(e) => return stop_http(Err(e)).await,
    };
    tracing::info!(
        database = store.backend_name(),
        replica = store.replica(),
        "store open"
    );

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
    // within a heartbeat (SQLite has no other replica to ask).
    if store.shared() {
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
    // Nothing can trigger a run before this replica's name is its own and
    // its previous process's runs are closed: a run started earlier would
    // be taken for one of those.
    *phase.write().unwrap_or_else(|p| p.into_inner()) =
        "waiting until no other process reports under this replica's name (HOUSEKEEPER_REPLICA)";
    tokio::select! {
        prepared = scheduler.prepare() => if let Err(e) = prepared {
            return stop_http(Err(e)).await;
        },
        _ = shutting_down.cancelled() => return stop_http(Ok(())).await,
    }
    app.set(api::router(state))
        .unwrap_or_else(|_| unreachable!("the application is set once"));
    shutting_down.cancelled().await;
    // A first load still under way is dropped; the scheduler is not started
    // after this point.
    stop_loading.abort();
    stop_watching.cancel();
    tracing::info!(
        ?grace,
        "shutting down: no new runs; waiting for running tasks"
    );
    scheduler.shutdown(grace).await;
    tracing::info!("all runs finished or interrupted");
    stop_http(Ok(())).await
}

/// The guests' runtime, shut down without waiting when dropped: work that
/// cannot be interrupted (a compile dropped at shutdown) does not hold the
/// service's exit.
struct GuestRuntime(Option<tokio::runtime::Runtime>);

impl GuestRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("held until dropped").handle()
    }
}

impl Drop for GuestRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Opens the store, waiting for a database that does not answer yet (with
/// backoff up to 30 s, saying what it waits for). Any other error, such as
/// a malformed URL or a schema it will not take over, ends the start.
async fn open_store(args: &ServeArgs) -> anyhow::Result<crate::store::Store> {
    let mut wait = Duration::from_secs(1);
    let database = crate::cli::redact(&args.db.url());
    loop {
        // An attempt can take up to DB_CONNECT_TIMEOUT: what the service
        // waits for is said as soon as it is slow, not only once it failed.
        let open = args.db.open();
        let slow = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            tracing::info!(database = %database, "waiting for the database to answer");
            std::future::pending::<()>().await
        };
        let opened = tokio::select! {
            opened = open => opened,
            _ = slow => unreachable!("never completes"),
        };
        match opened {
            Ok(store) => return Ok(store),
            Err(e) if unreachable_database(&e) => {
                tracing::warn!(
                    database = %database,
                    error = %format!("{e:#}"),
                    retry_in = ?wait,
                    "waiting for the database"
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether `e` says the database could not be reached (or is starting or
/// shutting down), as opposed to refusing what was asked.
fn unreachable_database(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|cause| match cause.downcast_ref::<sqlx::Error>() {
            Some(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_)) => true,
            Some(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|code| code.starts_with("57P") || code.starts_with("08")),
            _ => false,
        })
}

/// What a service that is not ready yet waits for, as `/health` and
/// `/ready` say.
type Phase = Arc<std::sync::RwLock<&'static str>>;

/// The router HTTP is served with: the application once it is ready,
/// before that answers that say the service is starting.
fn front(app: Arc<OnceLock<Router>>, phase: Phase) -> Router {
    Router::new().fallback(move |request: Request| {
        let (app, phase) = (app.clone(), phase.clone());
        async move {
            if let Some(router) = app.get() {
                let Ok(response) = router.clone().oneshot(request).await;
                return response;
            }
            let waiting = *phase.read().unwrap_or_else(|p| p.into_inner());
            match request.uri().path() {
                "/health" => Json(serde_json::json!({
                    "status": "starting",
                    "service": "housekeeper",
                    "detail": waiting,
                }))
                .into_response(),
                "/ready" => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(serde_json::json!({"status": "not ready", "error": waiting})),
                )
                    .into_response(),
                _ => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(serde_json::json!({
                        "error": format!("the service is starting: {waiting}")
                    })),
                )
                    .into_response(),
            }
        }
    })
}

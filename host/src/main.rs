use clap::Parser;
use housekeeper::cli::{Cli, Command, EXIT_LOAD_ERROR};
use housekeeper::runtime::compile;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // SQLite takes the host's allocator only before its first use.
    housekeeper::capabilities::sql::heap::install();
    // Compiling in a bounded child process (see `runtime::compile`).
    if std::env::args_os().nth(1).as_deref() == Some(compile::WORKER_ARG.as_ref()) {
        return compile::worker_main();
    }
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve(_));
    init_tracing(if serving { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_LOAD_ERROR);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            _ => housekeeper::cli::execute(cli).await,
        }
    });
    // Work that cannot be interrupted (a compile still under way when
    // shutdown dropped it) must not hold the exit; its worker process dies
    // with this one.
    runtime.shutdown_background();
    code
}

async fn serve(args: housekeeper::config::ServeArgs) -> ExitCode {
    let address = (args.host.as_str(), args.port);
    let listener = match tokio::net::TcpListener::bind(address).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "error: HOST={} PORT={}: cannot listen: {e}",
                args.host, args.port
            );
            return ExitCode::from(EXIT_LOAD_ERROR);
        }
    };
    let reloads = match hangups() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot install the SIGHUP handler: {e}");
            return ExitCode::from(EXIT_LOAD_ERROR);
        }
    };
    // Installed before anything answers, so that a SIGTERM that comes at
    // once is a shutdown, not lost or fatal.
    let shutdown = match shutdown_signal() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot install the SIGTERM handler: {e}");
            return ExitCode::from(EXIT_LOAD_ERROR);
        }
    };
    match housekeeper::server::run(args, listener, shutdown, reloads).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// SIGTERM or ctrl-c, both handled from this call on.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// One reload request per SIGHUP.
fn hangups() -> std::io::Result<impl futures_util::Stream<Item = ()>> {
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(futures_util::stream::unfold(
        hangup,
        |mut hangup| async move {
            hangup.recv().await?;
            tracing::info!("SIGHUP: rescanning the tasks directory");
            Some(((), hangup))
        },
    ))
}

/// `LOG_LEVEL` (a level or a tracing filter), `LOG_FORMAT` = pretty | json.
fn init_tracing(default_level: &str) {
    let filter = std::env::var("LOG_LEVEL").unwrap_or_else(|_| default_level.into());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("error: LOG_LEVEL={filter:?} is not a valid level or filter: {e}");
        std::process::exit(2);
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match std::env::var("LOG_FORMAT").as_deref() {
        Ok("json") => builder.json().init(),
        Ok("pretty") | Err(_) => builder.init(),
        Ok(other) => {
            eprintln!("error: LOG_FORMAT={other:?} must be json or pretty");
            std::process::exit(2);
        }
    }
}

use clap::Parser;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = housekeeper::cli::Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(housekeeper::cli::EXIT_LOAD_ERROR);
        }
    };
    runtime.block_on(housekeeper::cli::execute(cli))
}

/// `LOG_LEVEL` (a level or a tracing filter), `LOG_FORMAT` = pretty | json.
/// One-shot commands print their own results, so the default is `warn`.
fn init_tracing() {
    let filter = std::env::var("LOG_LEVEL").unwrap_or_else(|_| "warn".into());
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

//! `housekeeper db adopt` and `housekeeper db roles`: taking over the
//! reference service's tables (or saying what that would do), and the
//! SQL that brings each task's PostgreSQL role in line with its grant.

use super::{AdoptArgs, RolesArgs, fail, redact};
use crate::catalog::Catalog;
use crate::store::adopt::{Finding, Plan};
use crate::store::{Store, is_postgres};
use crate::terminal::{escape, escape_lines};
use std::process::ExitCode;

pub(super) async fn adopt(args: AdoptArgs) -> ExitCode {
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

pub(super) async fn roles(args: RolesArgs) -> ExitCode {
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

//! `database-vacuum`: `VACUUM ANALYZE` of the configured tables, or of the
//! whole database when none are configured (which needs a grant on `*`).
//!
//! `[config]`: `tables` (a list, or names separated by commas), `analyze`
//! (default true), `full` (default false: `VACUUM FULL` rewrites tables and
//! locks them). Grants: each table needs `vacuum` (and `analyze`). The host
//! builds each `VACUUM` (`sql::vacuum`) and runs it as the table's owner.

use housekeeper_sdk::sql::{self, Dialect, Ident, VacuumOptions};
use housekeeper_sdk::{Context, Error, Info, Report, Task, config, log};

struct DatabaseVacuum;

impl Task for DatabaseVacuum {
    fn describe() -> Info {
        Info::new("database-vacuum", "VACUUM ANALYZE of granted tables")
            .schedule("0 4 * * 0")
            .wants("sql:<table>:vacuum,analyze")
    }

    fn run(ctx: &Context) -> Result<Report, Error> {
        let tables = config::idents("tables")?;
        let analyze = config::bool_or("analyze", true)?;
        let full = config::bool_or("full", false)?;
        let sqlite = sql::dialect()? == Dialect::Sqlite;
        let options = VacuumOptions {
            full,
            // SQLite's VACUUM does not analyze.
            analyze: analyze && !sqlite,
            ..VacuumOptions::plain()
        };
        let targets: Vec<Option<&Ident>> = if tables.is_empty() || sqlite {
            vec![None]
        } else {
            tables.iter().map(Some).collect()
        };
        let mut done = 0;
        let mut failures = Vec::new();
        for target in &targets {
            let relation = target.map(Ident::relation);
            match sql::vacuum(relation.as_ref(), options) {
                Ok(()) => done += 1,
                Err(e) => {
                    let what = target.map(Ident::name).unwrap_or("the database");
                    log::error(format!("{what}: {}", e.message()));
                    failures.push(format!("{what}: {}", e.message()));
                }
            }
        }
        let verb = ctx.verb("vacuumed", "would vacuum");
        let what = if tables.is_empty() {
            "the database".to_owned()
        } else {
            format!("{done} of {} tables", targets.len())
        };
        if !failures.is_empty() {
            return Err(Error::failed(format!(
                "{verb} {what}; failed: {}",
                failures.join("; ")
            )));
        }
        Ok(Report::new(format!("{verb} {what}")).metric("tables_vacuumed", done))
    }
}

housekeeper_sdk::export_task!(DatabaseVacuum);

//! `cleanup-old-logs`: deletes files in a granted directory by age, count and
//! total size.
//!
//! `[config]`: `dir` (guest path, default `/logs`), `pattern` (glob, default
//! `*.log`), `recursive` (default false), `max_age_days`, `keep_newest`,
//! `max_total_bytes`.

use housekeeper_sdk::retention::{self, Policy, Scan};
use housekeeper_sdk::time::{self, DAY_MS};
use housekeeper_sdk::{Context, Error, Info, Report, Task, config, log};
use std::path::Path;

struct CleanupOldLogs;

impl Task for CleanupOldLogs {
    fn describe() -> Info {
        Info::new(
            "cleanup-old-logs",
            "Deletes log files by age, count and total size",
        )
        .schedule("0 3 * * *")
        .wants("dir:/logs:rw")
    }

    fn run(ctx: &Context) -> Result<Report, Error> {
        let dir = config::string_or("dir", "/logs")?;
        let pattern = config::string_or("pattern", "*.log")?;
        let scan = Scan::new(&pattern, config::bool_or("recursive", false)?)
            .map_err(Error::InvalidConfig)?;
        let policy = Policy {
            max_age_ms: config::u64("max_age_days")?.map(|d| (d as i64).saturating_mul(DAY_MS)),
            keep_newest: config::u64("keep_newest")?.map(|n| n as usize),
            max_total_bytes: config::u64("max_total_bytes")?,
        };
        if policy.is_empty() {
            log::warn(
                "no retention rule set (max_age_days, keep_newest, max_total_bytes): nothing will be deleted",
            );
        }

        let files = retention::scan(Path::new(&dir), &scan)
            .map_err(|e| Error::from(format!("cannot read {dir}: {e}")))?;
        let now = time::now_millis();
        let selection = policy.select(files, now);

        let mut deleted = 0u64;
        let mut freed = 0u64;
        let mut failed = 0u64;
        for file in &selection.delete {
            if ctx.dry_run {
                log::info(format!(
                    "would delete {} ({} bytes)",
                    file.path.display(),
                    file.size
                ));
                deleted += 1;
                freed += file.size;
                continue;
            }
            match std::fs::remove_file(&file.path) {
                Ok(()) => {
                    deleted += 1;
                    freed += file.size;
                }
                // Someone else removed it first: nothing to free, not a failure.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    failed += 1;
                    log::error(format!("cannot delete {}: {e}", file.path.display()));
                }
            }
        }

        let kept = selection.keep.len() as u64 + failed;
        let verb = ctx.verb("deleted", "would delete");
        let report = Report::new(format!(
            "{verb} {deleted} files ({freed} bytes) in {dir}, kept {kept}"
        ))
        .metric("files_deleted", deleted)
        .metric("bytes_freed", freed)
        .metric("files_kept", kept);
        if failed > 0 {
            return Err(Error::from(format!(
                "{failed} files could not be deleted ({verb} {deleted}, {freed} bytes)"
            )));
        }
        Ok(report)
    }
}

housekeeper_sdk::export_task!(CleanupOldLogs);

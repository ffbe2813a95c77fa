-- Run history, per-task toggles, and a maintained per-task summary so that
-- listing tasks with their stats never scans the history. Timestamps are
-- RFC 3339 text in UTC.

CREATE TABLE housekeeper_runs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    task_name      TEXT    NOT NULL,
    started_at     TEXT    NOT NULL,
    completed_at   TEXT,
    status         TEXT    NOT NULL,
    duration_ms    INTEGER,
    output         TEXT,
    error          TEXT,
    triggered_by   TEXT    NOT NULL,
    scheduled_for  TEXT,
    component_hash TEXT,
    dry_run        BOOLEAN NOT NULL DEFAULT FALSE,
    metrics        TEXT,
    fuel_used      INTEGER,
    replica        TEXT    NOT NULL,
    heartbeat_at   TEXT
);

CREATE UNIQUE INDEX housekeeper_runs_occurrence
    ON housekeeper_runs (task_name, scheduled_for)
    WHERE triggered_by = 'schedule';
CREATE INDEX housekeeper_runs_task_started ON housekeeper_runs (task_name, started_at DESC, id DESC);
CREATE INDEX housekeeper_runs_running ON housekeeper_runs (replica) WHERE status = 'running';

CREATE TABLE housekeeper_config (
    task_name        TEXT PRIMARY KEY,
    enabled          BOOLEAN NOT NULL DEFAULT TRUE,
    schedule         TEXT,
    last_modified_at TEXT    NOT NULL
);

CREATE TABLE housekeeper_task_stats (
    task_name         TEXT PRIMARY KEY,
    total_runs        INTEGER NOT NULL DEFAULT 0,
    success_count     INTEGER NOT NULL DEFAULT 0,
    error_count       INTEGER NOT NULL DEFAULT 0,
    skipped_count     INTEGER NOT NULL DEFAULT 0,
    total_duration_ms INTEGER NOT NULL DEFAULT 0,
    last_run_at       TEXT,
    last_status       TEXT,
    last_success_at   TEXT
);

-- Run history, per-task toggles, and a maintained per-task summary so that
-- listing tasks with their stats never scans the history.

CREATE TABLE housekeeper_runs (
    id             BIGSERIAL PRIMARY KEY,
    task_name      TEXT        NOT NULL,
    started_at     TIMESTAMPTZ NOT NULL,
    completed_at   TIMESTAMPTZ,
    status         TEXT        NOT NULL,
    duration_ms    BIGINT,
    output         TEXT,
    error          TEXT,
    triggered_by   TEXT        NOT NULL,
    scheduled_for  TIMESTAMPTZ,
    component_hash TEXT,
    dry_run        BOOLEAN     NOT NULL DEFAULT FALSE,
    metrics        JSONB,
    fuel_used      BIGINT,
    replica        TEXT        NOT NULL,
    heartbeat_at   TIMESTAMPTZ
);

-- Each scheduled occurrence is recorded (run or skipped) exactly once.
CREATE UNIQUE INDEX housekeeper_runs_occurrence
    ON housekeeper_runs (task_name, scheduled_for)
    WHERE triggered_by = 'schedule';
CREATE INDEX housekeeper_runs_task_started ON housekeeper_runs (task_name, started_at DESC, id DESC);
CREATE INDEX housekeeper_runs_running ON housekeeper_runs (replica) WHERE status = 'running';

CREATE TABLE housekeeper_config (
    task_name        TEXT PRIMARY KEY,
    enabled          BOOLEAN     NOT NULL DEFAULT TRUE,
    schedule         TEXT,
    last_modified_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Lifetime totals per task, updated with every finished run.
CREATE TABLE housekeeper_task_stats (
    task_name         TEXT PRIMARY KEY,
    total_runs        BIGINT NOT NULL DEFAULT 0,
    success_count     BIGINT NOT NULL DEFAULT 0,
    error_count       BIGINT NOT NULL DEFAULT 0,
    skipped_count     BIGINT NOT NULL DEFAULT 0,
    total_duration_ms BIGINT NOT NULL DEFAULT 0,
    last_run_at       TIMESTAMPTZ,
    last_status       TEXT,
    last_success_at   TIMESTAMPTZ
);

CREATE FUNCTION get_housekeeper_stats()
RETURNS TABLE (
    task_name       TEXT,
    total_runs      BIGINT,
    success_count   BIGINT,
    error_count     BIGINT,
    avg_duration_ms NUMERIC,
    last_run_at     TIMESTAMPTZ,
    last_status     TEXT
)
LANGUAGE sql STABLE AS $$
    SELECT s.task_name,
           s.total_runs,
           s.success_count,
           s.error_count,
           CASE WHEN s.total_runs = 0 THEN NULL
                ELSE round(s.total_duration_ms::numeric / s.total_runs, 2) END,
           s.last_run_at,
           s.last_status
    FROM housekeeper_task_stats s
    ORDER BY s.task_name
$$;

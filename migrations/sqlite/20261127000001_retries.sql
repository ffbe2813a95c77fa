-- A retry waiting out its backoff, kept across a restart of the service.
-- Claiming the retry deletes the row in the same transaction that records
-- its run, so it runs once.
CREATE TABLE housekeeper_retries (
    after_run     INTEGER PRIMARY KEY,
    task_name     TEXT    NOT NULL,
    scheduled_for TEXT,
    attempt       INTEGER NOT NULL,
    dry_run       BOOLEAN NOT NULL,
    replica       TEXT    NOT NULL,
    not_before    TEXT    NOT NULL
);

-- A retry waiting out its backoff. It is a row, not a timer in one
-- process, so that a replica that dies during the backoff does not take
-- the retry with it: the replica that planned it runs it when it is due,
-- and any other replica a lease later. Claiming the retry deletes the row
-- in the same transaction that records its run, so it runs once.
CREATE TABLE housekeeper_retries (
    after_run     BIGINT PRIMARY KEY,
    task_name     TEXT        NOT NULL,
    scheduled_for TIMESTAMPTZ,
    attempt       INTEGER     NOT NULL,
    dry_run       BOOLEAN     NOT NULL,
    replica       TEXT        NOT NULL,
    not_before    TIMESTAMPTZ NOT NULL
);

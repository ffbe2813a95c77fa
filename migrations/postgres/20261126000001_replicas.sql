-- Several replicas on one database. A running run holds a lease: one row
-- here, renewed by its replica's heartbeat, its expiry by the database's
-- clock. A task whose overlap policy is not `allow` has at most one
-- exclusive lease at a time, which is what keeps its runs from overlapping
-- across replicas. Every write about a run names its lease's epoch; a
-- replica that lost the lease (it was expired and reaped) can no longer
-- change the run.
CREATE TABLE housekeeper_leases (
    run_id        BIGINT PRIMARY KEY,
    task_name     TEXT        NOT NULL,
    exclusive     BOOLEAN     NOT NULL,
    replica       TEXT        NOT NULL,
    epoch         BIGINT      NOT NULL,
    expires_at    TIMESTAMPTZ NOT NULL,
    cancel_reason TEXT
);
CREATE UNIQUE INDEX housekeeper_leases_exclusive ON housekeeper_leases (task_name) WHERE exclusive;
CREATE INDEX housekeeper_leases_expiry ON housekeeper_leases (expires_at);

-- Which attempt of a fire a run is (0 for the first): a replica that
-- reaps a dead replica's run retries it while the task's policy allows.
ALTER TABLE housekeeper_runs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;

-- Live replicas and their offset from the database's clock.
CREATE TABLE housekeeper_replicas (
    replica         TEXT PRIMARY KEY,
    started_at      TIMESTAMPTZ NOT NULL,
    heartbeat_at    TIMESTAMPTZ NOT NULL,
    clock_offset_ms BIGINT      NOT NULL DEFAULT 0,
    version         TEXT        NOT NULL
);

-- Cluster-wide requests: a reload asked of one replica is seen by all.
CREATE TABLE housekeeper_cluster (
    id                INTEGER PRIMARY KEY CHECK (id = 1),
    reload_generation BIGINT NOT NULL DEFAULT 0
);
INSERT INTO housekeeper_cluster (id) VALUES (1);

-- Example application schema (PostgreSQL 13+) that the bundled database
-- tasks and the example manifests in deploy/tasks/ are written against:
-- an IoT platform with range-partitioned event, log and metric tables,
-- devices with rotating API keys, an audit log, and auth tables.
-- The tests load this file into a fresh database.

CREATE TABLE events (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    event_type  text        NOT NULL,
    device_uuid uuid,
    data        jsonb,
    "timestamp" timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE ("timestamp");
CREATE TABLE events_default PARTITION OF events DEFAULT;
CREATE INDEX ON events ("timestamp");

CREATE TABLE device_logs (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    device_uuid uuid        NOT NULL,
    level       text        NOT NULL DEFAULT 'info',
    message     text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (created_at);
CREATE TABLE device_logs_default PARTITION OF device_logs DEFAULT;

CREATE TABLE device_metrics (
    device_uuid uuid             NOT NULL,
    name        text             NOT NULL,
    value       double precision NOT NULL,
    recorded_at timestamptz      NOT NULL
) PARTITION BY RANGE (recorded_at);

CREATE TABLE devices (
    id                       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uuid                     uuid        NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    device_name              text        NOT NULL,
    device_api_key_hash      text,
    api_key_expires_at       timestamptz,
    api_key_last_rotated_at  timestamptz,
    api_key_rotation_enabled boolean     NOT NULL DEFAULT true,
    is_active                boolean     NOT NULL DEFAULT true,
    created_at               timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE device_api_key_history (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_uuid    uuid        NOT NULL REFERENCES devices (uuid) ON DELETE CASCADE,
    key_hash       text        NOT NULL,
    issued_at      timestamptz NOT NULL,
    expires_at     timestamptz,
    revoked_at     timestamptz,
    revoked_reason text,
    is_active      boolean     NOT NULL DEFAULT true
);

-- Devices whose key expires within 7 days.
CREATE VIEW devices_needing_rotation AS
SELECT uuid, device_name, api_key_expires_at,
       EXTRACT(DAY FROM api_key_expires_at - now())::int AS days_until_expiry
FROM devices
WHERE is_active
  AND api_key_rotation_enabled
  AND api_key_expires_at IS NOT NULL
  AND api_key_expires_at < now() + interval '7 days';

CREATE TABLE audit_logs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_type  text        NOT NULL,
    device_uuid uuid,
    severity    text        NOT NULL DEFAULT 'info',
    details     jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE access_tokens (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    bigint      NOT NULL,
    token_hash text        NOT NULL,
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE oauth_sessions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    state        text        NOT NULL,
    user_id      bigint,
    completed_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- What each device last reported per module: at most one row per
-- (device_uuid, module_name) should survive, and none for deleted devices.
CREATE TABLE device_modules (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_uuid uuid        NOT NULL,
    module_name text        NOT NULL,
    version     text,
    reported_at timestamptz NOT NULL DEFAULT now()
);

-- Plain (unpartitioned) table for row retention.
CREATE TABLE sensor_readings (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_uuid uuid             NOT NULL,
    value       double precision NOT NULL,
    created_at  timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX ON sensor_readings (created_at);

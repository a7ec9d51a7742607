-- Ferry control plane schema, version 2: drift and health telemetry,
-- drift policies, alerts and retraining triggers. Same dialect rules as
-- 0001 (key columns collate "C" on PostgreSQL). Absent values are stored as
-- sentinels (-1, 0, '') rather than NULL, which sqlx's Any driver binds
-- uniformly on both backends.

-- One row per drift summary (per device, per window), as received.
CREATE TABLE telemetry_windows (
    tenant TEXT NOT NULL,
    device TEXT NOT NULL,
    seq BIGINT NOT NULL,
    model TEXT NOT NULL,
    version BIGINT NOT NULL,
    variant TEXT NOT NULL,
    window_start_ms BIGINT NOT NULL,
    window_end_ms BIGINT NOT NULL,
    rows_seen BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    latency_p50_us BIGINT NOT NULL,
    latency_p99_us BIGINT NOT NULL,
    labelled BIGINT NOT NULL,
    correct BIGINT NOT NULL,
    -- Largest PSI over the policy's features; -1 when none.
    max_psi DOUBLE PRECISION NOT NULL,
    -- 1 when the window crossed the model's drift threshold.
    drifted BIGINT NOT NULL,
    summary TEXT NOT NULL,
    received_at_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant, device, seq)
);
CREATE INDEX telemetry_windows_model ON telemetry_windows (tenant, model, window_end_ms);

-- Latest health message per device (retained topic).
CREATE TABLE device_health (
    tenant TEXT NOT NULL,
    device TEXT NOT NULL,
    status TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    payload TEXT NOT NULL,
    received_at_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant, device)
);

-- Device events (activations, refusals, rollbacks, starts).
CREATE TABLE device_events (
    tenant TEXT NOT NULL,
    device TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (tenant, device, seq)
);

-- Drift policy per model, as JSON (see telemetry::policy::DriftPolicy).
CREATE TABLE drift_policies (
    tenant TEXT NOT NULL,
    model TEXT NOT NULL,
    config TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL,
    PRIMARY KEY (tenant, model)
);

CREATE TABLE alerts (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    model TEXT NOT NULL,
    version BIGINT NOT NULL,
    kind TEXT NOT NULL,
    device TEXT NOT NULL,
    opened_at_ms BIGINT NOT NULL,
    evidence TEXT NOT NULL,
    acknowledged_at_ms BIGINT NOT NULL,
    acknowledged_by TEXT NOT NULL
);
CREATE INDEX alerts_tenant ON alerts (tenant, opened_at_ms);

-- Retraining triggers fired (drift-based or scheduled) and their delivery.
CREATE TABLE retrain_triggers (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    model TEXT NOT NULL,
    version BIGINT NOT NULL,
    reason TEXT NOT NULL,
    alert_id TEXT NOT NULL,
    fired_at_ms BIGINT NOT NULL,
    payload TEXT NOT NULL,
    delivered BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    last_error TEXT NOT NULL
);
CREATE INDEX retrain_triggers_model ON retrain_triggers (tenant, model, fired_at_ms);

-- Cooldown and schedule state: one row per (tenant, model, key). Firing is
-- a conditional UPDATE, so replicas over one database fire once.
CREATE TABLE trigger_state (
    tenant TEXT NOT NULL,
    model TEXT NOT NULL,
    key TEXT NOT NULL,
    last_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant, model, key)
);

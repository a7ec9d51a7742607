-- Telemetry roll-ups: drift windows summed per minute, hour and day, per
-- device and for the whole fleet (device = ''), so that a 30-day chart reads
-- a few hundred rows instead of millions of windows. Written by the roll-up
-- job (telemetry::rollup), which claims windows by setting `rolled`; raw
-- windows and each resolution then age out under their own retention.

ALTER TABLE telemetry_windows ADD COLUMN rolled BIGINT NOT NULL DEFAULT 0;
CREATE INDEX telemetry_windows_unrolled ON telemetry_windows (received_at_ms) WHERE rolled = 0;
CREATE INDEX telemetry_windows_end ON telemetry_windows (window_end_ms);

CREATE TABLE telemetry_rollups (
    tenant TEXT NOT NULL,
    model TEXT NOT NULL,
    -- 'minute', 'hour' or 'day'
    resolution TEXT NOT NULL,
    -- '' for the fleet-wide row
    device TEXT NOT NULL,
    version BIGINT NOT NULL,
    variant TEXT NOT NULL,
    -- Start of the bucket, milliseconds since the epoch (UTC).
    bucket_ms BIGINT NOT NULL,
    windows BIGINT NOT NULL,
    rows_seen BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    -- Sum over windows of p50 x requests: the request-weighted mean of the
    -- windows' medians is this over requests.
    latency_p50_weighted DOUBLE PRECISION NOT NULL,
    -- The largest p99 of any window in the bucket.
    latency_p99_max_us BIGINT NOT NULL,
    labelled BIGINT NOT NULL,
    correct BIGINT NOT NULL,
    -- Largest PSI of any window; -1 when no window had one.
    max_psi DOUBLE PRECISION NOT NULL,
    drifted_windows BIGINT NOT NULL,
    drifted_rows BIGINT NOT NULL,
    -- Fleet-wide rows: the largest PSI per feature, a JSON object; '{}' on
    -- per-device rows (a heat map per device would cost a row per feature).
    feature_psi TEXT NOT NULL,
    -- Time before version: a chart reads one device's (or the fleet's) range
    -- of buckets across versions with one index seek.
    PRIMARY KEY (tenant, model, resolution, device, bucket_ms, version, variant)
);
CREATE INDEX telemetry_rollups_age ON telemetry_rollups (resolution, bucket_ms);

-- One row the roll-up job updates first in its transaction: replicas over
-- one database take turns (the row lock on PostgreSQL, the write lock on SQLite).
CREATE TABLE telemetry_rollup_state (
    name TEXT PRIMARY KEY,
    runs BIGINT NOT NULL
);
INSERT INTO telemetry_rollup_state (name, runs) VALUES ('rollup', 0);

-- Fleet distribution: enrollment tokens, devices (identified by the SHA-256
-- of the certificate the device CA issued them), deployments and the
-- per-device state of each deployment.

CREATE TABLE enrollment_tokens (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    labels TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    uses_left BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);

CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE,
    hostname TEXT NOT NULL,
    labels TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    last_seen BIGINT
);
CREATE INDEX devices_tenant ON devices (tenant, id);

CREATE TABLE deployments (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    model TEXT NOT NULL,
    version BIGINT NOT NULL,
    digest TEXT NOT NULL,
    selector TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- Microseconds, strictly increasing per server: the newest deployment
    -- of a model wins, so order must not depend on second-resolution ties.
    created_us BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    deleted_at BIGINT
);
CREATE INDEX deployments_tenant ON deployments (tenant, deleted_at);

CREATE TABLE device_models (
    device_id TEXT NOT NULL,
    model TEXT NOT NULL,
    version BIGINT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (device_id, model)
);

-- Ferry control plane schema, version 1 (SQLite). The PostgreSQL file of
-- the same number differs only in key columns: `TEXT COLLATE "C"` there
-- (byte order, as SQLite compares), so listings page in the same order on
-- both backends. The types used (BIGINT, TEXT, DOUBLE PRECISION) mean the
-- same on both.

CREATE TABLE tenants (
    name TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);

CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(name),
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE trust_roots (
    tenant TEXT NOT NULL REFERENCES tenants(name),
    version BIGINT NOT NULL,
    signed TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (tenant, version)
);

CREATE TABLE projects (
    tenant TEXT NOT NULL REFERENCES tenants(name),
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, name)
);

CREATE TABLE models (
    tenant TEXT NOT NULL REFERENCES tenants(name),
    name TEXT NOT NULL,
    project TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, name)
);
CREATE INDEX models_project ON models (tenant, project, name);

CREATE TABLE versions (
    tenant TEXT NOT NULL,
    model TEXT NOT NULL,
    version BIGINT NOT NULL,
    digest TEXT NOT NULL,
    header TEXT NOT NULL,
    manifest TEXT NOT NULL,
    size BIGINT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (tenant, model, version),
    FOREIGN KEY (tenant, model) REFERENCES models(tenant, name)
);

CREATE TABLE version_artifacts (
    tenant TEXT NOT NULL,
    model TEXT NOT NULL,
    version BIGINT NOT NULL,
    idx BIGINT NOT NULL,
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    len BIGINT NOT NULL,
    PRIMARY KEY (tenant, model, version, idx)
);
CREATE INDEX version_artifacts_digest ON version_artifacts (digest);

CREATE TABLE version_tags (
    tenant TEXT NOT NULL,
    model TEXT NOT NULL,
    version BIGINT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (tenant, model, version, key)
);
CREATE INDEX version_tags_kv ON version_tags (tenant, key, value);

CREATE TABLE version_metrics (
    tenant TEXT NOT NULL,
    model TEXT NOT NULL,
    version BIGINT NOT NULL,
    key TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (tenant, model, version, key)
);
CREATE INDEX version_metrics_kv ON version_metrics (tenant, key, value);

CREATE TABLE aliases (
    tenant TEXT NOT NULL,
    model TEXT NOT NULL,
    alias TEXT NOT NULL,
    version BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL,
    PRIMARY KEY (tenant, model, alias)
);

-- One hash chain per tenant. The head row doubles as the tenant's write
-- lock: every mutating transaction starts by updating it.
CREATE TABLE audit_heads (
    tenant TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);

CREATE TABLE audit (
    tenant TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (tenant, seq)
);

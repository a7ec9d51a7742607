-- Rollouts (docs/rollouts.md): named, versioned rollout policies; rollouts
-- with the engine's state (JSON), a revision for compare-and-set and the
-- lease of the replica that drives each; and the per-device assignments a
-- rollout makes, which `fleet::assign` weighs against deployments (the
-- newest wins). Absent values are sentinels, as in 0002.

CREATE TABLE rollout_policies (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    -- The document as given, and its format: toml or json.
    document TEXT NOT NULL,
    format TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (tenant, name, version)
);

CREATE TABLE rollouts (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    model TEXT NOT NULL,
    version BIGINT NOT NULL,
    digest TEXT NOT NULL,
    selector TEXT NOT NULL,
    -- The policy's name ('' for the defaults), its version (0 for the
    -- defaults or a one-off document) and the document itself.
    policy_name TEXT NOT NULL,
    policy_version BIGINT NOT NULL,
    policy_document TEXT NOT NULL,
    policy_format TEXT NOT NULL,
    -- rollout::engine::RolloutState as JSON, and its phase for queries.
    state TEXT NOT NULL,
    phase TEXT NOT NULL,
    -- Bumped by every save: a save based on an older revision is refused.
    revision BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    -- The replica driving it ('' when none) and until when (ms).
    lease_holder TEXT NOT NULL,
    lease_expires_ms BIGINT NOT NULL
);
CREATE INDEX rollouts_tenant ON rollouts (tenant, created_at);
CREATE INDEX rollouts_phase ON rollouts (phase);

CREATE TABLE rollout_targets (
    rollout_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    device_id TEXT NOT NULL,
    model TEXT NOT NULL,
    -- -1 with digest '': the assignment is withdrawn (a rollback of a
    -- device that ran no version before).
    version BIGINT NOT NULL,
    digest TEXT NOT NULL,
    -- Same clock as deployments.created_us: the newer of the two wins.
    updated_us BIGINT NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX rollout_targets_tenant ON rollout_targets (tenant, device_id);

-- One-time dashboard sign-in links (`ferry dashboard`, `ferry demo`): a
-- link stands for the API token that asked for it, works once and for ten
-- minutes, and becomes an ordinary session. Only the SHA-256 of its code
-- is stored.

CREATE TABLE dashboard_sign_in_links (
    code_hash TEXT PRIMARY KEY,
    token_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE INDEX dashboard_sign_in_links_expires ON dashboard_sign_in_links (expires_at);

-- Dashboard sessions: a browser signs in with an API token and gets the
-- `ferry_session` cookie. Only the SHA-256 of the cookie's session id is
-- stored, with the token it stands for and the session's CSRF secret. The
-- token is looked up again on every request (revoked: the session ends).

CREATE TABLE dashboard_sessions (
    id_hash TEXT PRIMARY KEY,
    token_id TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE INDEX dashboard_sessions_expires ON dashboard_sessions (expires_at);

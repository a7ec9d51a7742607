-- Enrollment tokens can be revoked (`ferry device token revoke`): a revoked
-- token is refused like an expired one, and listed with when it was revoked.

ALTER TABLE enrollment_tokens ADD COLUMN revoked_at BIGINT;

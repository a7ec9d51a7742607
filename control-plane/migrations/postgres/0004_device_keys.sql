-- The raw ed25519 public key (hex) each device enrolled with: the key its
-- telemetry is signed with, verified at ingest. Devices enrolled before
-- this migration have none, and their telemetry is refused until they
-- enroll again.
ALTER TABLE devices ADD COLUMN public_key TEXT;

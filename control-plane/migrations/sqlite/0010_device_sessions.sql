-- Connections and fleet generations in the database, so that listings page
-- in SQL and every replica sees what the others know.
--
-- session_id, session_until: the QUIC session a replica holds with the
-- device (a random id per connection) and until when, in milliseconds, the
-- lease runs. The replica renews the leases of its sessions while they
-- last and clears its own when one ends; those of a replica that died
-- lapse on their own. "Connected" is a lease that has not lapsed.
ALTER TABLE devices ADD COLUMN session_id TEXT;
ALTER TABLE devices ADD COLUMN session_until BIGINT;

-- Bumped in the same transaction as every change to which devices a
-- tenant has or to their labels (enrollment, labels, revocation), and
-- stamped on the device changed (devices.generation): a replica keeps a
-- snapshot of the tenant's devices (the deployment listings read it
-- instead of every device) and, when the generation moved, reads again
-- only the devices stamped after its snapshot.
CREATE TABLE device_generations (
    tenant TEXT PRIMARY KEY,
    generation BIGINT NOT NULL
);

ALTER TABLE devices ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
CREATE INDEX devices_generation ON devices (tenant, generation);

-- The runtimes a device offers, as its last fleet hello listed them
-- (`onnx`, `onnx-burn-cuda`, ...; comma-separated; NULL until its first
-- hello). A deployment of a bundle that requires a runtime (its signed
-- `ferry.target.runtime` tag, in version_tags) targets only the devices
-- that offer it. A change bumps the device generation, like a label change.
ALTER TABLE devices ADD COLUMN runtimes TEXT;

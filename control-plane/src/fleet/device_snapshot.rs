//! A snapshot of each tenant's devices, kept at the tenant's device
//! generation (migration 0010) for the listings that walk every device
//! (deployment states): read whole once, then patched with only the
//! devices stamped since whenever the generation moved, through any
//! replica.

use super::Fleet;
use crate::store::fleet as db;
use crate::store::StoreError;
use std::sync::Arc;

/// A tenant's devices, by id, as of a device generation.
pub(super) struct DeviceSnapshot {
    generation: i64,
    devices: Arc<Vec<db::Device>>,
}

impl Fleet {
    /// The tenant's devices as of its current device generation (which
    /// devices there are, their labels, revocations; `last_seen` and the
    /// session lease as they were read then), by id. When the generation
    /// moved (an enrollment, a label change or a revocation through any
    /// replica) only the devices stamped since are read again. Listings
    /// that walk every device (deployment states) read this instead of
    /// 10,000 rows per page.
    pub async fn device_snapshot(&self, tenant: &str) -> Result<Arc<Vec<db::Device>>, StoreError> {
        let generation = self.store.device_generation(tenant).await?;
        let mut snapshots = self.snapshots.lock().await;
        // Rows are read after the generation: a change that lands between
        // the two reads is in the snapshot and moves the generation again,
        // so the next call reads it once more; never the reverse.
        let devices = match snapshots.get(tenant) {
            Some(s) if s.generation == generation => return Ok(s.devices.clone()),
            Some(s) if s.generation < generation => {
                let changed = self
                    .store
                    .devices_changed_after(tenant, s.generation)
                    .await?;
                Arc::new(patched(&s.devices, changed))
            }
            _ => Arc::new(self.store.devices(tenant).await?),
        };
        snapshots.insert(
            tenant.to_string(),
            DeviceSnapshot {
                generation,
                devices: devices.clone(),
            },
        );
        Ok(devices)
    }
}

/// `devices` (by id) with `changed` (by id) in place of the devices of the
/// same id, and the new ones added in order.
fn patched(devices: &[db::Device], changed: Vec<db::Device>) -> Vec<db::Device> {
    let mut out = Vec::with_capacity(devices.len() + changed.len());
    let mut changed = changed.into_iter().peekable();
    for d in devices {
        while let Some(c) = changed.next_if(|c| c.id < d.id) {
            out.push(c);
        }
        match changed.next_if(|c| c.id == d.id) {
            Some(c) => out.push(c),
            None => out.push(d.clone()),
        }
    }
    out.extend(changed);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_patched_with_the_devices_changed_since() {
        let dev = |id: &str, host: &str| db::Device {
            id: id.into(),
            tenant: "t".into(),
            hostname: host.into(),
            labels: db::Labels::new(),
            created_at: 0,
            revoked_at: None,
            last_seen: None,
            session_until: None,
            runtimes: None,
        };
        let ids = |v: &[db::Device]| -> Vec<String> {
            v.iter()
                .map(|d| format!("{}:{}", d.id, d.hostname))
                .collect()
        };
        let old = vec![dev("b", "old"), dev("d", "old"), dev("f", "old")];
        // New before, between and after; one replaced.
        let changed = vec![
            dev("a", "new"),
            dev("d", "new"),
            dev("e", "new"),
            dev("g", "new"),
        ];
        assert_eq!(
            ids(&patched(&old, changed)),
            ["a:new", "b:old", "d:new", "e:new", "f:old", "g:new"]
        );
        assert_eq!(ids(&patched(&old, vec![])), ["b:old", "d:old", "f:old"]);
        assert_eq!(ids(&patched(&[], vec![dev("a", "new")])), ["a:new"]);
    }
}

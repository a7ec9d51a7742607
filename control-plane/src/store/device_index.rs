//! The fleet listing's reads, in two steps so that a page costs what it
//! shows: first the ids of the page, then the full rows of those devices
//! only. Filters by label and connection and both orders (by host; by
//! session, then last heard of) are paged by the database itself
//! ([`Store::device_page`]); a filter by running model reads every
//! device's small sort and filter keys ([`Store::device_keys`]) instead.
//! At 10,000 devices, reading every device into the process for each view
//! (2-3 us a row through sqlx's SQLite driver, more with the health
//! message) was what made `/fleet` slow.

use super::fleet::{Device, DeviceModelReport, DEVICE_COLS};
use super::sql::Sql;
use super::telemetry::HealthRow;
use super::{Backend, Result, Store};
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};
use std::collections::HashMap;

/// What the listing filters and sorts a device by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceKey {
    pub id: String,
    pub hostname: String,
    /// The labels as stored (JSON), parsed only when a filter needs them.
    pub labels: String,
    /// Last heard of over QUIC (seconds).
    pub last_seen: Option<i64>,
    /// When its last health message arrived over MQTT (milliseconds).
    pub health_at_ms: Option<i64>,
    /// Until when a replica's session lease runs (milliseconds).
    pub session_until: Option<i64>,
}

impl FromRow<'_, AnyRow> for DeviceKey {
    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(DeviceKey {
            id: r.try_get("id")?,
            hostname: r.try_get("hostname")?,
            labels: r.try_get("labels")?,
            last_seen: r.try_get("last_seen")?,
            health_at_ms: None,
            session_until: r.try_get("session_until")?,
        })
    }
}

/// How `k=v` stands in a device's stored labels: serde_json writes them
/// without spaces and escapes every quote inside a key or value, so this
/// text occurs in the labels exactly when the device has that label.
fn label_needle(k: &str, v: &str) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    format!("{}:{}", q(k), q(v))
}

/// The order of a device listing paged by the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceOrder {
    /// By host name, then id.
    Host,
    /// Devices with a session first, then the most recently heard of
    /// (over QUIC or MQTT), then by host name.
    LastSeen,
}

/// What a device listing paged by the database keeps, and its order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevicePageQuery {
    /// `k=v` labels the device must all have.
    pub labels: Vec<(String, String)>,
    /// `Some(true)`: with a session only; `Some(false)`: without.
    pub connected: Option<bool>,
    pub order: DeviceOrder,
}

/// `head` followed by `col IN ($1, ...)` over `ids`.
fn in_list(head: &str, col: &str, tenant: &str, ids: &[String]) -> Sql {
    let mut sql = Sql::new(head);
    sql.push_bind(tenant.to_string())
        .push(&format!(" AND {col} IN ("));
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.push_bind(id.clone());
    }
    sql.push(")");
    sql
}

impl Store {
    /// The sort and filter keys of `tenant`'s unrevoked devices; with
    /// `health`, when each one's health message arrived.
    pub async fn device_keys(&self, tenant: &str, health: bool) -> Result<Vec<DeviceKey>> {
        let mut keys: Vec<DeviceKey> = sqlx::query_as(
            "SELECT id, hostname, labels, last_seen, session_until FROM devices WHERE tenant = $1 AND revoked_at IS NULL",
        )
        .bind(tenant)
        .fetch_all(self.pool())
        .await?;
        if health {
            // Two reads merged here cost half of one LEFT JOIN on SQLite,
            // which looks each device up in device_health.
            let at: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
                "SELECT device, received_at_ms FROM device_health WHERE tenant = $1",
            )
            .bind(tenant)
            .fetch_all(self.pool())
            .await?
            .into_iter()
            .collect();
            for k in &mut keys {
                k.health_at_ms = at.get(&k.id).copied();
            }
        }
        Ok(keys)
    }

    /// One page of `tenant`'s unrevoked devices that have every label of
    /// `q.labels` (and a session or none, with `q.connected`), in `q.order`,
    /// and how many there are: paged by the database, only the ids of the
    /// page read. `now_ms` decides which session leases still run.
    pub async fn device_page(
        &self,
        tenant: &str,
        q: &DevicePageQuery,
        now_ms: i64,
        offset: i64,
        limit: i64,
    ) -> Result<(i64, Vec<String>)> {
        let filtered = |head: &str| {
            let mut sql = Sql::new(head);
            sql.push_bind(tenant.to_string())
                .push(" AND d.revoked_at IS NULL");
            for (k, v) in &q.labels {
                // A substring test, case-sensitive on both backends.
                sql.push(match self.backend() {
                    Backend::Sqlite => " AND instr(d.labels, ",
                    Backend::Postgres => " AND strpos(d.labels, ",
                })
                .push_bind(label_needle(k, v))
                .push(") > 0");
            }
            match q.connected {
                Some(true) => {
                    sql.push(" AND d.session_until >= ").push_bind(now_ms);
                }
                Some(false) => {
                    sql.push(" AND (d.session_until IS NULL OR d.session_until < ")
                        .push_bind(now_ms)
                        .push(")");
                }
                None => {}
            }
            sql
        };
        let total: i64 = filtered("SELECT COUNT(*) FROM devices d WHERE d.tenant = ")
            .query_scalar()
            .fetch_one(self.pool())
            .await?;
        let mut page = match q.order {
            DeviceOrder::Host => {
                let mut sql = filtered("SELECT d.id FROM devices d WHERE d.tenant = ");
                sql.push(" ORDER BY d.hostname, d.id");
                sql
            }
            DeviceOrder::LastSeen => {
                // Devices with a session first, then by when last heard of
                // over QUIC or MQTT (seconds; never heard of last). Only
                // the page's ids leave the database: reading every
                // device's keys into the process cost 2-3 us a row.
                let mut sql = filtered(
                    "SELECT d.id FROM devices d LEFT JOIN device_health h \
                     ON h.tenant = d.tenant AND h.device = d.id WHERE d.tenant = ",
                );
                sql.push(" ORDER BY CASE WHEN d.session_until >= ")
                    .push_bind(now_ms)
                    .push(" THEN 0 ELSE 1 END, ")
                    .push(match self.backend() {
                        Backend::Sqlite => "max",
                        Backend::Postgres => "GREATEST",
                    })
                    .push("(COALESCE(d.last_seen, -1), COALESCE(h.received_at_ms / 1000, -1)) DESC, d.hostname, d.id");
                sql
            }
        };
        page.push(" LIMIT ")
            .push_bind(limit)
            .push(" OFFSET ")
            .push_bind(offset);
        let ids: Vec<String> = page.query_scalar().fetch_all(self.pool()).await?;
        Ok((total, ids))
    }

    /// The devices of `tenant` that report `model` active.
    pub async fn devices_with_active(&self, tenant: &str, model: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT m.device_id FROM device_models m JOIN devices d ON d.id = m.device_id \
             WHERE d.tenant = $1 AND m.model = $2 AND m.state = 'active'",
        )
        .bind(tenant)
        .bind(model)
        .fetch_all(self.pool())
        .await?)
    }

    /// The health messages of `tenant` whose text contains `needle` (a
    /// superset: the caller reads the message to decide).
    pub async fn device_health_containing(
        &self,
        tenant: &str,
        needle: &str,
    ) -> Result<Vec<HealthRow>> {
        // `!` escapes LIKE's wildcards in the needle itself.
        let pat = format!(
            "%{}%",
            needle
                .replace('!', "!!")
                .replace('%', "!%")
                .replace('_', "!_")
        );
        Ok(sqlx::query_as(
            "SELECT device, status, at_ms, payload, received_at_ms FROM device_health \
             WHERE tenant = $1 AND payload LIKE $2 ESCAPE '!'",
        )
        .bind(tenant)
        .bind(pat)
        .fetch_all(self.pool())
        .await?)
    }

    /// The devices `ids` of `tenant`, in no particular order.
    pub async fn devices_by_id(&self, tenant: &str, ids: &[String]) -> Result<Vec<Device>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let head = format!("SELECT {DEVICE_COLS} FROM devices WHERE tenant = ");
        Ok(in_list(&head, "id", tenant, ids)
            .query_as()
            .fetch_all(self.pool())
            .await?)
    }

    /// The latest health message of each of the devices `ids` that sent one.
    pub async fn device_health_of_each(
        &self,
        tenant: &str,
        ids: &[String],
    ) -> Result<Vec<HealthRow>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(in_list(
            "SELECT device, status, at_ms, payload, received_at_ms FROM device_health WHERE tenant = ",
            "device",
            tenant,
            ids,
        )
        .query_as()
        .fetch_all(self.pool())
        .await?)
    }

    /// The activation reports of the devices `ids`, by device and model.
    pub async fn device_model_reports_of_each(
        &self,
        tenant: &str,
        ids: &[String],
    ) -> Result<Vec<DeviceModelReport>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = in_list(
            "SELECT m.device_id, m.model, m.version, m.state, m.detail, m.updated_at \
             FROM device_models m JOIN devices d ON d.id = m.device_id WHERE d.tenant = ",
            "m.device_id",
            tenant,
            ids,
        );
        sql.push(" ORDER BY m.device_id, m.model");
        Ok(sql.query_as().fetch_all(self.pool()).await?)
    }
}

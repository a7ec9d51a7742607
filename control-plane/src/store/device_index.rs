//! The fleet listing's reads, in two steps so that a page costs what it
//! shows: first every unrevoked device's sort and filter keys (small
//! columns, no health message), then the full rows of the page shown;
//! the default view (by host, filtered by labels at most) is paged by the
//! database itself.
//! At 10,000 devices, reading and parsing every device's health message
//! for each view was what made `/fleet` slow.

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
}

impl FromRow<'_, AnyRow> for DeviceKey {
    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(DeviceKey {
            id: r.try_get("id")?,
            hostname: r.try_get("hostname")?,
            labels: r.try_get("labels")?,
            last_seen: r.try_get("last_seen")?,
            health_at_ms: None,
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
            "SELECT id, hostname, labels, last_seen FROM devices WHERE tenant = $1 AND revoked_at IS NULL",
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
    /// `labels`, by host name then id, and how many there are: the
    /// listing's default view, paged by the database.
    pub async fn device_ids_by_host(
        &self,
        tenant: &str,
        labels: &[(String, String)],
        offset: i64,
        limit: i64,
    ) -> Result<(i64, Vec<String>)> {
        let filtered = |head: &str| {
            let mut sql = Sql::new(head);
            sql.push_bind(tenant.to_string())
                .push(" AND revoked_at IS NULL");
            for (k, v) in labels {
                // A substring test, case-sensitive on both backends.
                sql.push(match self.backend() {
                    Backend::Sqlite => " AND instr(labels, ",
                    Backend::Postgres => " AND strpos(labels, ",
                })
                .push_bind(label_needle(k, v))
                .push(") > 0");
            }
            sql
        };
        let total: i64 = filtered("SELECT COUNT(*) FROM devices WHERE tenant = ")
            .query_scalar()
            .fetch_one(self.pool())
            .await?;
        let mut page = filtered("SELECT id FROM devices WHERE tenant = ");
        page.push(" ORDER BY hostname, id LIMIT ")
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

//! Telemetry roll-ups (migration 0008): windows summed per minute, hour and
//! day, per device and fleet-wide. The job claims unrolled windows, sums
//! them (the arithmetic is `telemetry::rollup`'s) and adds the sums to the
//! stored buckets in one transaction, so a window is counted exactly once
//! whether it arrives on time, replayed from an outbox, or while another
//! replica rolls up.

use super::sql::Sql;
use super::{Result, Store};
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};
use std::collections::BTreeMap;

/// A roll-up's time resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resolution {
    Minute,
    Hour,
    Day,
}

impl Resolution {
    pub const ALL: [Resolution; 3] = [Resolution::Minute, Resolution::Hour, Resolution::Day];

    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Minute => "minute",
            Resolution::Hour => "hour",
            Resolution::Day => "day",
        }
    }

    pub fn width_ms(self) -> i64 {
        match self {
            Resolution::Minute => 60_000,
            Resolution::Hour => 3_600_000,
            Resolution::Day => 86_400_000,
        }
    }

    /// The start of the bucket holding the instant `ms` (UTC).
    pub fn bucket(self, ms: i64) -> i64 {
        ms.div_euclid(self.width_ms()) * self.width_ms()
    }
}

/// A claimed window, as the roll-up needs it.
#[derive(Clone, Debug)]
pub struct RollupWindow {
    pub tenant: String,
    pub device: String,
    pub seq: i64,
    pub model: String,
    pub version: i64,
    pub variant: String,
    pub window_end_ms: i64,
    pub rows_seen: i64,
    pub requests: i64,
    pub errors: i64,
    pub latency_p50_us: i64,
    pub latency_p99_us: i64,
    pub labelled: i64,
    pub correct: i64,
    pub max_psi: f64,
    pub drifted: bool,
    /// The summary as received (JSON), for its per-feature PSI.
    pub summary: String,
}

impl FromRow<'_, AnyRow> for RollupWindow {
    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(RollupWindow {
            tenant: r.try_get("tenant")?,
            device: r.try_get("device")?,
            seq: r.try_get("seq")?,
            model: r.try_get("model")?,
            version: r.try_get("version")?,
            variant: r.try_get("variant")?,
            window_end_ms: r.try_get("window_end_ms")?,
            rows_seen: r.try_get("rows_seen")?,
            requests: r.try_get("requests")?,
            errors: r.try_get("errors")?,
            latency_p50_us: r.try_get("latency_p50_us")?,
            latency_p99_us: r.try_get("latency_p99_us")?,
            labelled: r.try_get("labelled")?,
            correct: r.try_get("correct")?,
            max_psi: r.try_get("max_psi")?,
            drifted: r.try_get::<i64, _>("drifted")? == 1,
            summary: r.try_get("summary")?,
        })
    }
}

/// Which bucket a sum belongs to. `device` is empty for the fleet.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RollupKey {
    pub tenant: String,
    pub model: String,
    pub resolution: Resolution,
    pub device: String,
    pub version: i64,
    pub variant: String,
    pub bucket_ms: i64,
}

/// The sums of one bucket. Adding two is exact for the counts; latency
/// keeps the request-weighted sum of medians and the worst p99.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rollup {
    pub windows: i64,
    pub rows_seen: i64,
    pub requests: i64,
    pub errors: i64,
    pub latency_p50_weighted: f64,
    pub latency_p99_max_us: i64,
    pub labelled: i64,
    pub correct: i64,
    /// -1 when no window had a PSI.
    pub max_psi: f64,
    pub drifted_windows: i64,
    pub drifted_rows: i64,
    /// Largest PSI per feature (fleet-wide rows only).
    pub feature_psi: BTreeMap<String, f64>,
}

impl Rollup {
    pub fn empty() -> Self {
        Rollup {
            max_psi: -1.0,
            ..Rollup::default()
        }
    }

    /// Adds `o` into `self`.
    pub fn merge(&mut self, o: &Rollup) {
        self.windows += o.windows;
        self.rows_seen += o.rows_seen;
        self.requests += o.requests;
        self.errors += o.errors;
        self.latency_p50_weighted += o.latency_p50_weighted;
        self.latency_p99_max_us = self.latency_p99_max_us.max(o.latency_p99_max_us);
        self.labelled += o.labelled;
        self.correct += o.correct;
        self.max_psi = self.max_psi.max(o.max_psi);
        self.drifted_windows += o.drifted_windows;
        self.drifted_rows += o.drifted_rows;
        for (f, v) in &o.feature_psi {
            let e = self.feature_psi.entry(f.clone()).or_insert(*v);
            *e = e.max(*v);
        }
    }
}

/// One stored bucket, as charts read it.
#[derive(Clone, Debug)]
pub struct RollupRow {
    pub version: i64,
    pub variant: String,
    pub bucket_ms: i64,
    pub sums: Rollup,
}

impl FromRow<'_, AnyRow> for RollupRow {
    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        let features: String = r.try_get("feature_psi")?;
        let mut row = row_sums(r, "bucket_ms")?;
        // Written only by this module; an unreadable map reads as none.
        row.sums.feature_psi = serde_json::from_str(&features).unwrap_or_default();
        Ok(row)
    }
}

/// A row's key and sums, its time read from column `time` (the map of
/// per-feature PSI left empty).
fn row_sums(r: &AnyRow, time: &str) -> Result<RollupRow, sqlx::Error> {
    Ok(RollupRow {
        version: r.try_get("version")?,
        variant: r.try_get("variant")?,
        bucket_ms: r.try_get(time)?,
        sums: Rollup {
            windows: r.try_get("windows")?,
            rows_seen: r.try_get("rows_seen")?,
            requests: r.try_get("requests")?,
            errors: r.try_get("errors")?,
            latency_p50_weighted: r.try_get("latency_p50_weighted")?,
            latency_p99_max_us: r.try_get("latency_p99_max_us")?,
            labelled: r.try_get("labelled")?,
            correct: r.try_get("correct")?,
            max_psi: r.try_get("max_psi")?,
            drifted_windows: r.try_get("drifted_windows")?,
            drifted_rows: r.try_get("drifted_rows")?,
            feature_psi: BTreeMap::new(),
        },
    })
}

/// A chart point: the buckets of one version and variant merged in SQL.
struct PointRow(RollupRow);

impl FromRow<'_, AnyRow> for PointRow {
    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        row_sums(r, "point_ms").map(PointRow)
    }
}

/// One stored bucket's per-feature PSI (fleet-wide rows), for the heat map.
#[derive(Clone, Debug)]
pub struct FeaturePsiRow {
    pub bucket_ms: i64,
    pub feature_psi: BTreeMap<String, f64>,
}

impl FromRow<'_, AnyRow> for FeaturePsiRow {
    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        let features: String = r.try_get("feature_psi")?;
        Ok(FeaturePsiRow {
            bucket_ms: r.try_get("bucket_ms")?,
            feature_psi: serde_json::from_str(&features).unwrap_or_default(),
        })
    }
}

/// What a chart asks for.
#[derive(Clone, Debug)]
pub struct RollupQuery {
    pub resolution: Resolution,
    /// Empty: the fleet-wide rows.
    pub device: String,
    pub version: Option<i64>,
    pub since_ms: i64,
}

const COLUMNS: &str = "windows, rows_seen, requests, errors, latency_p50_weighted, latency_p99_max_us, labelled, correct, max_psi, drifted_windows, drifted_rows, feature_psi";

/// The WHERE conditions of a chart's read: one model, resolution and
/// device (or the fleet), from `since_ms`, one version or all.
fn filter(sql: &mut Sql, tenant: &str, model: &str, q: &RollupQuery) {
    sql.push("tenant = ")
        .push_bind(tenant.to_string())
        .push(" AND model = ")
        .push_bind(model.to_string())
        .push(" AND resolution = ")
        .push_bind(q.resolution.as_str().to_string())
        .push(" AND device = ")
        .push_bind(q.device.clone())
        .push(" AND bucket_ms >= ")
        .push_bind(q.since_ms);
    if let Some(v) = q.version {
        sql.push(" AND version = ").push_bind(v);
    }
}

/// Rows per multi-row INSERT (19 values each, well under both backends'
/// bind limits).
const UPSERT_CHUNK: usize = 400;

/// Windows marked rolled up per UPDATE (3 values each).
const MARK_CHUNK: usize = 500;

/// Adds `sums` to the stored buckets inside `tx`, which holds the roll-up
/// state row: counts add, maxima keep the larger, per-feature maps merge.
async fn add(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    mut sums: BTreeMap<RollupKey, Rollup>,
) -> Result<Vec<(String, String)>> {
    // Per-feature maps can't be merged in portable SQL: read the stored
    // ones (fleet-wide rows only carry them) and merge here.
    for (k, r) in sums.iter_mut() {
        if k.device.is_empty() && !r.feature_psi.is_empty() {
            let stored: Option<String> = sqlx::query_scalar(
                "SELECT feature_psi FROM telemetry_rollups WHERE tenant = $1 AND model = $2 AND resolution = $3 AND device = '' AND version = $4 AND variant = $5 AND bucket_ms = $6",
            )
            .bind(k.tenant.as_str())
            .bind(k.model.as_str())
            .bind(k.resolution.as_str())
            .bind(k.version)
            .bind(k.variant.as_str())
            .bind(k.bucket_ms)
            .fetch_optional(&mut **tx)
            .await?;
            if let Some(s) = stored {
                let old: BTreeMap<String, f64> = serde_json::from_str(&s).unwrap_or_default();
                for (f, v) in old {
                    let e = r.feature_psi.entry(f).or_insert(v);
                    *e = e.max(v);
                }
            }
        }
    }
    let rows: Vec<(RollupKey, Rollup)> = sums.into_iter().collect();
    for chunk in rows.chunks(UPSERT_CHUNK) {
        let mut sql = Sql::new(&format!(
            "INSERT INTO telemetry_rollups (tenant, model, resolution, device, version, variant, bucket_ms, {COLUMNS}) VALUES "
        ));
        for (i, (k, r)) in chunk.iter().enumerate() {
            sql.push(if i == 0 { "(" } else { ", (" });
            sql.push_bind(k.tenant.clone())
                .push(", ")
                .push_bind(k.model.clone())
                .push(", ")
                .push_bind(k.resolution.as_str().to_string())
                .push(", ")
                .push_bind(k.device.clone())
                .push(", ")
                .push_bind(k.version)
                .push(", ")
                .push_bind(k.variant.clone())
                .push(", ")
                .push_bind(k.bucket_ms)
                .push(", ")
                .push_bind(r.windows)
                .push(", ")
                .push_bind(r.rows_seen)
                .push(", ")
                .push_bind(r.requests)
                .push(", ")
                .push_bind(r.errors)
                .push(", ")
                .push_bind(r.latency_p50_weighted)
                .push(", ")
                .push_bind(r.latency_p99_max_us)
                .push(", ")
                .push_bind(r.labelled)
                .push(", ")
                .push_bind(r.correct)
                .push(", ")
                .push_bind(r.max_psi)
                .push(", ")
                .push_bind(r.drifted_windows)
                .push(", ")
                .push_bind(r.drifted_rows)
                .push(", ")
                .push_bind(serde_json::to_string(&r.feature_psi).unwrap_or_else(|_| "{}".into()))
                .push(")");
        }
        // Counts add; maxima keep the larger (CASE: SQLite's max() and
        // PostgreSQL's GREATEST() are spelled differently).
        sql.push(
            " ON CONFLICT (tenant, model, resolution, device, version, variant, bucket_ms) DO UPDATE SET \
             windows = telemetry_rollups.windows + excluded.windows, \
             rows_seen = telemetry_rollups.rows_seen + excluded.rows_seen, \
             requests = telemetry_rollups.requests + excluded.requests, \
             errors = telemetry_rollups.errors + excluded.errors, \
             latency_p50_weighted = telemetry_rollups.latency_p50_weighted + excluded.latency_p50_weighted, \
             latency_p99_max_us = CASE WHEN excluded.latency_p99_max_us > telemetry_rollups.latency_p99_max_us THEN excluded.latency_p99_max_us ELSE telemetry_rollups.latency_p99_max_us END, \
             labelled = telemetry_rollups.labelled + excluded.labelled, \
             correct = telemetry_rollups.correct + excluded.correct, \
             max_psi = CASE WHEN excluded.max_psi > telemetry_rollups.max_psi THEN excluded.max_psi ELSE telemetry_rollups.max_psi END, \
             drifted_windows = telemetry_rollups.drifted_windows + excluded.drifted_windows, \
             drifted_rows = telemetry_rollups.drifted_rows + excluded.drifted_rows, \
             feature_psi = excluded.feature_psi",
        );
        sql.query().execute(&mut **tx).await?;
    }
    let mut changed: Vec<(String, String)> = rows
        .iter()
        .map(|(k, _)| (k.tenant.clone(), k.model.clone()))
        .collect();
    changed.dedup();
    Ok(changed)
}

impl Store {
    /// Claims up to `batch` windows not rolled up yet, hands them to `sum`
    /// and adds the sums it returns to the stored buckets; one transaction,
    /// which replicas take in turns. Returns how many windows were claimed
    /// and the (tenant, model) pairs whose buckets changed.
    pub async fn roll_up(
        &self,
        batch: i64,
        sum: impl FnOnce(&[RollupWindow]) -> BTreeMap<RollupKey, Rollup>,
    ) -> Result<(usize, Vec<(String, String)>)> {
        let mut tx = self.pool().begin().await?;
        // Taken first: the row lock (PostgreSQL) or write lock (SQLite)
        // orders concurrent jobs, so the read-modify-write below is safe.
        sqlx::query("UPDATE telemetry_rollup_state SET runs = runs + 1 WHERE name = 'rollup'")
            .execute(&mut *tx)
            .await?;
        // Read the batch, then mark it by key. One `UPDATE … IN (SELECT …
        // LIMIT) RETURNING` let PostgreSQL join the whole table against the
        // batch with a plan made before the table had statistics (minutes a
        // batch in the seeded benchmark); two plain statements leave the
        // planner nothing to get wrong. The state row's lock, taken above,
        // keeps other replicas' jobs out meanwhile.
        let claimed: Vec<RollupWindow> = sqlx::query_as(
            "SELECT tenant, device, seq, model, version, variant, window_end_ms, rows_seen, requests, errors, \
             latency_p50_us, latency_p99_us, labelled, correct, max_psi, drifted, summary \
             FROM telemetry_windows WHERE rolled = 0 ORDER BY received_at_ms LIMIT $1",
        )
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
        if claimed.is_empty() {
            tx.rollback().await?;
            return Ok((0, Vec::new()));
        }
        for chunk in claimed.chunks(MARK_CHUNK) {
            let mut sql =
                Sql::new("UPDATE telemetry_windows SET rolled = 1 WHERE rolled = 0 AND (tenant, device, seq) IN (");
            for (i, w) in chunk.iter().enumerate() {
                sql.push(if i == 0 { "(" } else { ", (" });
                sql.push_bind(w.tenant.clone())
                    .push(", ")
                    .push_bind(w.device.clone())
                    .push(", ")
                    .push_bind(w.seq)
                    .push(")");
            }
            sql.push(")");
            sql.query().execute(&mut *tx).await?;
        }
        let changed = add(&mut tx, sum(&claimed)).await?;
        tx.commit().await?;
        Ok((claimed.len(), changed))
    }

    /// Adds `sums` to the stored buckets in one transaction (the roll-up
    /// job's arithmetic, for a tool that loads history it summed itself:
    /// `ferry-seed-dashboard`). Returns the (tenant, model) pairs changed.
    pub async fn add_rollups(
        &self,
        sums: BTreeMap<RollupKey, Rollup>,
    ) -> Result<Vec<(String, String)>> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("UPDATE telemetry_rollup_state SET runs = runs + 1 WHERE name = 'rollup'")
            .execute(&mut *tx)
            .await?;
        let changed = add(&mut tx, sums).await?;
        tx.commit().await?;
        Ok(changed)
    }

    /// The stored buckets of `model` matching `q`, by version, variant and time.
    pub async fn rollups(
        &self,
        tenant: &str,
        model: &str,
        q: &RollupQuery,
    ) -> Result<Vec<RollupRow>> {
        let mut sql = Sql::new(&format!(
            "SELECT version, variant, bucket_ms, {COLUMNS} FROM telemetry_rollups WHERE "
        ));
        filter(&mut sql, tenant, model, q);
        sql.push(" ORDER BY version, variant, bucket_ms");
        Ok(sql.query_as().fetch_all(self.pool()).await?)
    }

    /// The buckets of [`Store::rollups`] merged into points `step_ms` wide
    /// from `q.since_ms` (a point starts at `since_ms + k * step_ms`), one
    /// row per version, variant and point, by the database: what
    /// [`Rollup::merge`] of the point's buckets gives (counts added, maxima
    /// kept; `max_psi` stays -1 when no bucket had one), but the per-feature
    /// maps left empty ([`Store::rollup_feature_psi`] reads those).
    /// Each row costs a chart a few microseconds through sqlx's Any driver,
    /// so a day of minutes is read as its 360 points, not 1,440 buckets.
    pub async fn rollup_points(
        &self,
        tenant: &str,
        model: &str,
        q: &RollupQuery,
        step_ms: i64,
    ) -> Result<Vec<RollupRow>> {
        let step = step_ms.max(1);
        let mut sql = Sql::new("SELECT version, variant, ");
        // `bucket_ms >= since_ms` below: the division is of a non-negative
        // number, so truncating (both backends) is flooring.
        sql.push_bind(q.since_ms)
            .push(" + ((bucket_ms - ")
            .push_bind(q.since_ms)
            .push(") / ")
            .push_bind(step)
            .push(") * ")
            .push_bind(step)
            // PostgreSQL's SUM(bigint) is NUMERIC, which the Any driver
            // can't decode: cast back.
            .push(
                " AS point_ms, \
                 CAST(SUM(windows) AS BIGINT) AS windows, \
                 CAST(SUM(rows_seen) AS BIGINT) AS rows_seen, \
                 CAST(SUM(requests) AS BIGINT) AS requests, \
                 CAST(SUM(errors) AS BIGINT) AS errors, \
                 SUM(latency_p50_weighted) AS latency_p50_weighted, \
                 MAX(latency_p99_max_us) AS latency_p99_max_us, \
                 CAST(SUM(labelled) AS BIGINT) AS labelled, \
                 CAST(SUM(correct) AS BIGINT) AS correct, \
                 MAX(max_psi) AS max_psi, \
                 CAST(SUM(drifted_windows) AS BIGINT) AS drifted_windows, \
                 CAST(SUM(drifted_rows) AS BIGINT) AS drifted_rows \
                 FROM telemetry_rollups WHERE ",
            );
        filter(&mut sql, tenant, model, q);
        sql.push(" GROUP BY version, variant, point_ms ORDER BY version, variant, point_ms");
        let rows: Vec<PointRow> = sql.query_as().fetch_all(self.pool()).await?;
        Ok(rows.into_iter().map(|p| p.0).collect())
    }

    /// The per-feature PSI maps of the buckets matching `q` (only
    /// fleet-wide rows have any; buckets without one are left out), every
    /// version and variant, in no order: the heat map reads these, at a
    /// coarser resolution than the charts where the range allows, and
    /// merges them itself (portable SQL can't merge JSON maps).
    pub async fn rollup_feature_psi(
        &self,
        tenant: &str,
        model: &str,
        q: &RollupQuery,
    ) -> Result<Vec<FeaturePsiRow>> {
        let mut sql = Sql::new("SELECT bucket_ms, feature_psi FROM telemetry_rollups WHERE ");
        filter(&mut sql, tenant, model, q);
        sql.push(" AND feature_psi <> '{}'");
        Ok(sql.query_as().fetch_all(self.pool()).await?)
    }

    /// Deletes rolled-up windows that ended before `raw_before_ms` and
    /// buckets of each resolution older than its cut, `limit` rows per
    /// statement (long deletes would hold SQLite's write lock). Returns the
    /// rows deleted.
    pub async fn expire_telemetry(
        &self,
        raw_before_ms: i64,
        buckets_before_ms: &[(Resolution, i64)],
        limit: i64,
    ) -> Result<u64> {
        let mut total = 0;
        loop {
            let n = sqlx::query(
                "DELETE FROM telemetry_windows WHERE (tenant, device, seq) IN \
                 (SELECT tenant, device, seq FROM telemetry_windows WHERE window_end_ms < $1 AND rolled = 1 LIMIT $2)",
            )
            .bind(raw_before_ms)
            .bind(limit)
            .execute(self.pool())
            .await?
            .rows_affected();
            total += n;
            if n < limit as u64 {
                break;
            }
        }
        for (res, before) in buckets_before_ms {
            loop {
                let n = sqlx::query(
                    "DELETE FROM telemetry_rollups WHERE (tenant, model, resolution, device, version, variant, bucket_ms) IN \
                     (SELECT tenant, model, resolution, device, version, variant, bucket_ms FROM telemetry_rollups WHERE resolution = $1 AND bucket_ms < $2 LIMIT $3)",
                )
                .bind(res.as_str())
                .bind(*before)
                .bind(limit)
                .execute(self.pool())
                .await?
                .rows_affected();
                total += n;
                if n < limit as u64 {
                    break;
                }
            }
        }
        Ok(total)
    }
}

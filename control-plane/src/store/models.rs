//! Models and the filters shared by model and version listings.

use super::sql::Sql;
use super::{not_found_model, Result, Store};
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
pub struct ModelSummary {
    pub name: String,
    pub project: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub latest_version: Option<i64>,
    pub versions: i64,
    pub aliases: BTreeMap<String, i64>,
}

impl FromRow<'_, AnyRow> for ModelSummary {
    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(ModelSummary {
            name: r.try_get("name")?,
            project: r.try_get("project")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
            latest_version: r.try_get("latest")?,
            versions: r.try_get("n")?,
            aliases: BTreeMap::new(),
        })
    }
}

/// A comparison on a version metric (`auc>=0.9`).
#[derive(Clone, Debug, PartialEq)]
pub struct MetricFilter {
    pub key: String,
    pub op: &'static str,
    pub value: f64,
}

/// Filters shared by model and version listings.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    pub name_prefix: Option<String>,
    pub query: Option<String>,
    pub project: Option<String>,
    /// `(key, Some(value))` or `(key, None)` for "has the tag".
    pub tags: Vec<(String, Option<String>)>,
    pub aliases: Vec<String>,
    pub metrics: Vec<MetricFilter>,
    pub include_archived: bool,
}

const MODEL_COLS: &str = "SELECT m.name, m.project, m.created_at, m.updated_at, \
     (SELECT MAX(x.version) FROM versions x WHERE x.tenant = m.tenant AND x.model = m.name AND x.status = 'ready') AS latest, \
     (SELECT COUNT(*) FROM versions x WHERE x.tenant = m.tenant AND x.model = m.name) AS n \
     FROM models m WHERE m.tenant = ";

impl Filters {
    /// Appends the filter conditions on a version alias `v` (columns
    /// `v.tenant`, `v.model`, `v.version`, `v.status`).
    pub(super) fn push_version_conditions(&self, sql: &mut Sql) {
        if !self.include_archived {
            sql.push(" AND v.status = 'ready'");
        }
        for (k, v) in &self.tags {
            sql.push(" AND EXISTS (SELECT 1 FROM version_tags t WHERE t.tenant = v.tenant AND t.model = v.model AND t.version = v.version AND t.key = ")
                .push_bind(k.clone());
            if let Some(v) = v {
                sql.push(" AND t.value = ").push_bind(v.clone());
            }
            sql.push(")");
        }
        // One EXISTS per metric key with all of its comparisons: a range
        // (`auc>=0.9`, `auc<=0.95`) as two EXISTS over the same rows made
        // PostgreSQL, without statistics yet, join them in a nested loop
        // (2.9 s at 5,000 versions, against 7 ms as one).
        let mut keys: Vec<&str> = Vec::new();
        for m in &self.metrics {
            if !keys.contains(&m.key.as_str()) {
                keys.push(&m.key);
            }
        }
        for key in keys {
            sql.push(" AND EXISTS (SELECT 1 FROM version_metrics mt WHERE mt.tenant = v.tenant AND mt.model = v.model AND mt.version = v.version AND mt.key = ")
                .push_bind(key.to_string());
            for m in self.metrics.iter().filter(|m| m.key == key) {
                // `op` is one of a fixed set of comparison operators.
                sql.push(&format!(" AND mt.value {} ", m.op))
                    .push_bind(m.value);
            }
            sql.push(")");
        }
        for a in &self.aliases {
            sql.push(" AND EXISTS (SELECT 1 FROM aliases al WHERE al.tenant = v.tenant AND al.model = v.model AND al.version = v.version AND al.alias = ")
                .push_bind(a.clone())
                .push(")");
        }
    }

    fn push_name_conditions(&self, sql: &mut Sql, col: &str) {
        if let Some(p) = &self.name_prefix {
            sql.push(&format!(" AND substr({col}, 1, CAST("))
                .push_bind(p.chars().count() as i64)
                .push(" AS INTEGER)) = ")
                .push_bind(p.clone());
        }
        if let Some(q) = &self.query {
            // Names use [A-Za-z0-9._-]; `_` is the only LIKE wildcard among them.
            let pat = format!("%{}%", q.to_lowercase().replace('_', "!_"));
            sql.push(&format!(" AND LOWER({col}) LIKE "))
                .push_bind(pat)
                .push(" ESCAPE '!'");
        }
    }
}

/// How the dashboard orders a model listing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ModelSort {
    /// By name, ascending.
    #[default]
    Name,
    /// Most recently updated first, ties by name.
    Updated,
}

const MODEL_COUNT: &str = "SELECT COUNT(*) AS n FROM models m WHERE m.tenant = ";

/// `head` (ending in `m.tenant = `) with the tenant and every condition of
/// `f`: a model matches when it has a version matching every
/// version-level filter.
fn filtered(head: &str, tenant: &str, f: &Filters) -> Sql {
    let mut sql = Sql::new(head);
    sql.push_bind(tenant.to_string());
    f.push_name_conditions(&mut sql, "m.name");
    if let Some(p) = &f.project {
        sql.push(" AND m.project = ").push_bind(p.clone());
    }
    sql.push(
        " AND EXISTS (SELECT 1 FROM versions v WHERE v.tenant = m.tenant AND v.model = m.name",
    );
    f.push_version_conditions(&mut sql);
    sql.push(")");
    sql
}

impl Store {
    /// Models matching `f`, by name, after `page_token` (a name), at most
    /// `limit`. A model matches when it has a version matching every
    /// version-level filter.
    pub async fn list_models(
        &self,
        tenant: &str,
        f: &Filters,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ModelSummary>> {
        let mut sql = filtered(MODEL_COLS, tenant, f);
        if let Some(a) = after {
            sql.push(" AND m.name > ").push_bind(a.to_string());
        }
        sql.push(" ORDER BY m.name LIMIT ").push_bind(limit);
        let mut out: Vec<ModelSummary> = sql.query_as().fetch_all(self.pool()).await?;
        self.attach_aliases(tenant, &mut out).await?;
        Ok(out)
    }

    /// Models matching `f` in `sort` order, `limit` of them from `offset`
    /// (the dashboard's numbered pages).
    pub async fn model_page(
        &self,
        tenant: &str,
        f: &Filters,
        sort: ModelSort,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<ModelSummary>> {
        let mut sql = filtered(MODEL_COLS, tenant, f);
        sql.push(match sort {
            ModelSort::Name => " ORDER BY m.name",
            ModelSort::Updated => " ORDER BY m.updated_at DESC, m.name",
        });
        sql.push(" LIMIT ")
            .push_bind(limit)
            .push(" OFFSET ")
            .push_bind(offset);
        let mut out: Vec<ModelSummary> = sql.query_as().fetch_all(self.pool()).await?;
        self.attach_aliases(tenant, &mut out).await?;
        Ok(out)
    }

    /// How many models match `f`.
    pub async fn count_models(&self, tenant: &str, f: &Filters) -> Result<i64> {
        Ok(filtered(MODEL_COUNT, tenant, f)
            .query_scalar()
            .fetch_one(self.pool())
            .await?)
    }

    /// Fills in the aliases of `models` with one query.
    async fn attach_aliases(&self, tenant: &str, models: &mut [ModelSummary]) -> Result<()> {
        if models.is_empty() {
            return Ok(());
        }
        let mut sql = Sql::new("SELECT model, alias, version FROM aliases WHERE tenant = ");
        sql.push_bind(tenant.to_string()).push(" AND model IN (");
        for (i, m) in models.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.push_bind(m.name.clone());
        }
        sql.push(")");
        let rows: Vec<(String, String, i64)> = sql.query_as().fetch_all(self.pool()).await?;
        let mut by_model: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        for (model, alias, version) in rows {
            by_model.entry(model).or_default().insert(alias, version);
        }
        for m in models.iter_mut() {
            if let Some(a) = by_model.remove(&m.name) {
                m.aliases = a;
            }
        }
        Ok(())
    }

    pub async fn model(&self, tenant: &str, name: &str) -> Result<ModelSummary> {
        // A model with only archived versions still shows.
        let mut sql = Sql::new(MODEL_COLS);
        sql.push_bind(tenant.to_string())
            .push(" AND m.name = ")
            .push_bind(name.to_string());
        let row: Option<ModelSummary> = sql.query_as().fetch_optional(self.pool()).await?;
        let Some(mut m) = row else {
            return Err(not_found_model(name));
        };
        m.aliases = self
            .aliases(tenant, name)
            .await?
            .into_iter()
            .map(|a| (a.alias, a.version))
            .collect();
        Ok(m)
    }

    pub(super) async fn model_exists(&self, tenant: &str, model: &str) -> Result<bool> {
        Ok(
            sqlx::query("SELECT 1 AS one FROM models WHERE tenant = $1 AND name = $2")
                .bind(tenant)
                .bind(model)
                .fetch_optional(self.pool())
                .await?
                .is_some(),
        )
    }
}

//! ModelDoc (one version's full metadata) and version comparison: pure
//! functions over stored manifests.

use ferry_protocol::baseline::FeatureKind;
use ferry_protocol::encoding;
use ferry_protocol::trust::TrustRoot;
use ferry_protocol::SignedManifest;
use ferry_protocol::{Manifest, Schema, TensorSpec};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

use crate::store::VersionRow;

/// Decodes the stored header (hex of the canonical encoding).
pub fn header(row: &VersionRow) -> Option<SignedManifest> {
    let bytes = hex::decode(&row.header).ok()?;
    encoding::decode(
        &bytes,
        ferry_protocol::bundle::HEADER_LIMIT,
        "bundle header",
    )
    .ok()
}

pub fn manifest(row: &VersionRow) -> Option<Manifest> {
    serde_json::from_str(&row.manifest).ok()
}

fn baseline_summary(m: &Manifest) -> Value {
    match &m.baseline {
        None => Value::Null,
        Some(b) => json!({
            "rows": b.rows,
            "features": b.features.iter().map(|f| match &f.kind {
                FeatureKind::Numeric { edges, min, max, .. } => json!({
                    "name": f.name, "kind": "numeric", "bins": edges.len() + 1, "min": min, "max": max,
                }),
                FeatureKind::Categorical { categories, .. } => json!({
                    "name": f.name, "kind": "categorical", "categories": categories.len(),
                }),
            }).collect::<Vec<_>>(),
        }),
    }
}

/// The full description of one version.
pub fn model_doc(project: &str, row: &VersionRow, trust: Option<&TrustRoot>) -> Value {
    let m = manifest(row);
    let h = header(row);
    let signatures: Vec<Value> = h
        .map(|h| {
            h.signatures
                .iter()
                .map(|s| {
                    let publisher = trust
                        .and_then(|t| t.publisher(&s.key_id))
                        .map(|p| p.name.clone());
                    json!({ "key_id": s.key_id.to_hex(), "publisher": publisher })
                })
                .collect()
        })
        .unwrap_or_default();
    let mut doc = json!({
        "model": row.model,
        "version": row.version,
        "project": project,
        "status": row.status,
        "aliases": row.aliases,
        "digest": row.digest,
        "size": row.size,
        "registered_at": row.created_at,
        "registered_by": row.created_by,
        "signatures": signatures,
    });
    if let (Some(m), Some(obj)) = (m, doc.as_object_mut()) {
        obj.insert("runtime".into(), json!(m.runtime));
        obj.insert("schema".into(), schema_json(&m.schema));
        obj.insert("metrics".into(), json!(m.metrics));
        obj.insert("tags".into(), json!(m.tags));
        obj.insert("lineage".into(), json!(m.lineage));
        obj.insert("target".into(), json!(m.target));
        obj.insert("created_at".into(), json!(m.created_at));
        obj.insert("expires_at".into(), json!(m.expires_at));
        obj.insert("artifacts".into(), json!(m.artifacts));
        obj.insert("baseline".into(), baseline_summary(&m));
        obj.insert(
            "test_vectors".into(),
            json!(m.test_vectors.as_ref().map_or(0, |t| t.vectors.len())),
        );
    }
    doc
}

fn spec_json(t: &TensorSpec) -> Value {
    json!({ "name": t.name, "datatype": t.dtype.oip_name(), "shape": t.shape_string() })
}

fn schema_json(s: &Schema) -> Value {
    json!({
        "inputs": s.inputs.iter().map(spec_json).collect::<Vec<_>>(),
        "outputs": s.outputs.iter().map(spec_json).collect::<Vec<_>>(),
    })
}

fn spec_changes(kind: &str, a: &[TensorSpec], b: &[TensorSpec], out: &mut Vec<String>) {
    for x in a {
        match b.iter().find(|y| y.name == x.name) {
            None => out.push(format!("{kind} {:?} removed", x.name)),
            Some(y) => {
                if x.dtype != y.dtype {
                    out.push(format!(
                        "{kind} {:?}: type {} -> {}",
                        x.name, x.dtype, y.dtype
                    ));
                }
                if x.shape != y.shape {
                    out.push(format!(
                        "{kind} {:?}: shape {} -> {}",
                        x.name,
                        x.shape_string(),
                        y.shape_string()
                    ));
                }
            }
        }
    }
    for y in b {
        if !a.iter().any(|x| x.name == y.name) {
            out.push(format!(
                "{kind} {:?} added ({} {})",
                y.name,
                y.dtype,
                y.shape_string()
            ));
        }
    }
}

/// Schema differences from `a` to `b`, one line each.
pub fn schema_changes(a: &Schema, b: &Schema) -> Vec<String> {
    let mut out = Vec::new();
    spec_changes("input", &a.inputs, &b.inputs, &mut out);
    spec_changes("output", &a.outputs, &b.outputs, &mut out);
    out
}

fn baseline_changes(a: &Manifest, b: &Manifest) -> Vec<String> {
    let (Some(x), Some(y)) = (&a.baseline, &b.baseline) else {
        return match (&a.baseline, &b.baseline) {
            (None, Some(_)) => vec!["baseline added".into()],
            (Some(_), None) => vec!["baseline removed".into()],
            _ => vec![],
        };
    };
    let mut out = Vec::new();
    if x.rows != y.rows {
        out.push(format!("reference rows {} -> {}", x.rows, y.rows));
    }
    for f in &x.features {
        match y.features.iter().find(|g| g.name == f.name) {
            None => out.push(format!("feature {:?} removed", f.name)),
            Some(g) => {
                if let (
                    FeatureKind::Numeric {
                        min: a0,
                        max: a1,
                        edges: ea,
                        ..
                    },
                    FeatureKind::Numeric {
                        min: b0,
                        max: b1,
                        edges: eb,
                        ..
                    },
                ) = (&f.kind, &g.kind)
                {
                    if ea.len() != eb.len() {
                        out.push(format!(
                            "feature {:?}: bins {} -> {}",
                            f.name,
                            ea.len() + 1,
                            eb.len() + 1
                        ));
                    }
                    if a0 != b0 || a1 != b1 {
                        out.push(format!(
                            "feature {:?}: range [{a0}, {a1}] -> [{b0}, {b1}]",
                            f.name
                        ));
                    }
                } else if std::mem::discriminant(&f.kind) != std::mem::discriminant(&g.kind) {
                    out.push(format!("feature {:?}: kind changed", f.name));
                }
            }
        }
    }
    for g in &y.features {
        if !x.features.iter().any(|f| f.name == g.name) {
            out.push(format!("feature {:?} added", g.name));
        }
    }
    out
}

/// Side-by-side comparison; the first version is the base that deltas are
/// taken against.
pub fn compare(rows: &[VersionRow]) -> Value {
    let manifests: Vec<Option<Manifest>> = rows.iter().map(manifest).collect();
    let base = rows.first();
    let key = |r: &VersionRow| r.version.to_string();
    let mut metric_names = BTreeSet::new();
    let mut tag_names = BTreeSet::new();
    for m in manifests.iter().flatten() {
        metric_names.extend(m.metrics.keys().cloned());
        tag_names.extend(m.tags.keys().cloned());
    }
    let metrics: Vec<Value> = metric_names
        .iter()
        .map(|name| {
            let mut values = Map::new();
            let mut delta = Map::new();
            let base_v = manifests
                .first()
                .and_then(|m| m.as_ref())
                .and_then(|m| m.metrics.get(name).copied());
            for (r, m) in rows.iter().zip(&manifests) {
                let v = m.as_ref().and_then(|m| m.metrics.get(name).copied());
                values.insert(key(r), json!(v));
                if let (Some(b), Some(v)) = (base_v, v) {
                    if Some(r.version) != base.map(|b| b.version) {
                        delta.insert(key(r), json!(v - b));
                    }
                }
            }
            json!({ "name": name, "values": values, "delta": delta })
        })
        .collect();
    let tags: Vec<Value> = tag_names
        .iter()
        .map(|name| {
            let values: BTreeMap<String, Option<String>> = rows
                .iter()
                .zip(&manifests)
                .map(|(r, m)| (key(r), m.as_ref().and_then(|m| m.tags.get(name).cloned())))
                .collect();
            json!({ "name": name, "values": values })
        })
        .collect();
    let mut versions = Vec::new();
    let mut schema = Map::new();
    let mut baseline = Map::new();
    let mut size_delta = Map::new();
    for (r, m) in rows.iter().zip(&manifests) {
        versions.push(json!({
            "version": r.version, "status": r.status, "aliases": r.aliases,
            "digest": r.digest, "size": r.size, "registered_at": r.created_at,
            "lineage": m.as_ref().map(|m| json!(m.lineage)),
        }));
        if let (Some(b), Some(bm), Some(m)) = (base, manifests.first().and_then(|m| m.as_ref()), m)
        {
            if r.version != b.version {
                schema.insert(key(r), json!(schema_changes(&bm.schema, &m.schema)));
                baseline.insert(key(r), json!(baseline_changes(bm, m)));
                size_delta.insert(key(r), json!(r.size - b.size));
            }
        }
    }
    json!({
        "model": base.map(|b| b.model.clone()),
        "base": base.map(|b| b.version),
        "versions": versions,
        "metrics": metrics,
        "tags": tags,
        "size_delta": size_delta,
        "schema_changes": schema,
        "baseline_changes": baseline,
    })
}

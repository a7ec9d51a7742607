//! ModelDoc (one version's full metadata) and version comparison: pure
//! functions over stored manifests.

use ferry_protocol::baseline::FeatureKind;
use ferry_protocol::trust::TrustRoot;
use ferry_protocol::{Manifest, Schema, TensorSpec};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

use super::types::{
    BaselineFeature, BaselineSummary, ComparedVersion, Comparison, ManifestDoc, MetricComparison,
    ModelDoc, SchemaDoc, SignatureInfo, TagComparison, TensorDoc,
};
use crate::store::VersionRow;

fn baseline_summary(m: &Manifest) -> Option<BaselineSummary> {
    let b = m.baseline.as_ref()?;
    Some(BaselineSummary {
        rows: b.rows,
        features: b
            .features
            .iter()
            .map(|f| match &f.kind {
                FeatureKind::Numeric {
                    edges, min, max, ..
                } => BaselineFeature {
                    name: f.name.clone(),
                    kind: "numeric".into(),
                    bins: Some(edges.len() + 1),
                    min: Some(*min),
                    max: Some(*max),
                    categories: None,
                },
                FeatureKind::Categorical { categories, .. } => BaselineFeature {
                    name: f.name.clone(),
                    kind: "categorical".into(),
                    bins: None,
                    min: None,
                    max: None,
                    categories: Some(categories.len()),
                },
            })
            .collect(),
    })
}

/// The full description of one version.
pub fn model_doc(project: &str, row: &VersionRow, trust: Option<&TrustRoot>) -> ModelDoc {
    let signatures = row
        .signed_manifest()
        .map(|h| {
            h.signatures
                .iter()
                .map(|s| SignatureInfo {
                    key_id: s.key_id.to_hex(),
                    publisher: trust
                        .and_then(|t| t.publisher(&s.key_id))
                        .map(|p| p.name.clone()),
                })
                .collect()
        })
        .unwrap_or_default();
    let manifest = row.manifest().map(|m| ManifestDoc {
        runtime: json!(m.runtime),
        schema: schema_doc(&m.schema),
        metrics: m.metrics.clone(),
        tags: m.tags.clone(),
        lineage: json!(m.lineage),
        target: json!(m.target),
        created_at: m.created_at,
        expires_at: m.expires_at,
        artifacts: m.artifacts.iter().map(|a| json!(a)).collect(),
        baseline: baseline_summary(&m),
        test_vectors: m.test_vectors.as_ref().map_or(0, |t| t.vectors.len()),
    });
    ModelDoc {
        model: row.model.clone(),
        version: row.version,
        project: project.to_string(),
        status: row.status.clone(),
        aliases: row.aliases.clone(),
        digest: row.digest.clone(),
        size: row.size,
        registered_at: row.created_at,
        registered_by: row.created_by.clone(),
        signatures,
        manifest,
    }
}

fn spec_doc(t: &TensorSpec) -> TensorDoc {
    TensorDoc {
        name: t.name.clone(),
        datatype: t.dtype.oip_name().to_string(),
        shape: t.shape_string(),
    }
}

fn schema_doc(s: &Schema) -> SchemaDoc {
    SchemaDoc {
        inputs: s.inputs.iter().map(spec_doc).collect(),
        outputs: s.outputs.iter().map(spec_doc).collect(),
    }
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
pub fn compare(rows: &[VersionRow]) -> Comparison {
    let manifests: Vec<Option<Manifest>> = rows.iter().map(VersionRow::manifest).collect();
    let base = rows.first();
    let base_manifest = manifests.first().and_then(|m| m.as_ref());
    let key = |r: &VersionRow| r.version.to_string();
    let mut metric_names = BTreeSet::new();
    let mut tag_names = BTreeSet::new();
    for m in manifests.iter().flatten() {
        metric_names.extend(m.metrics.keys().cloned());
        tag_names.extend(m.tags.keys().cloned());
    }
    let metrics = metric_names
        .iter()
        .map(|name| {
            let mut values = BTreeMap::new();
            let mut delta = BTreeMap::new();
            let base_v = base_manifest.and_then(|m| m.metrics.get(name).copied());
            for (r, m) in rows.iter().zip(&manifests) {
                let v = m.as_ref().and_then(|m| m.metrics.get(name).copied());
                values.insert(key(r), v);
                if let (Some(b), Some(v)) = (base_v, v) {
                    if Some(r.version) != base.map(|b| b.version) {
                        delta.insert(key(r), v - b);
                    }
                }
            }
            MetricComparison {
                name: name.clone(),
                values,
                delta,
            }
        })
        .collect();
    let tags = tag_names
        .iter()
        .map(|name| TagComparison {
            name: name.clone(),
            values: rows
                .iter()
                .zip(&manifests)
                .map(|(r, m)| (key(r), m.as_ref().and_then(|m| m.tags.get(name).cloned())))
                .collect(),
        })
        .collect();
    let mut versions = Vec::new();
    let mut schema_changes_by = BTreeMap::new();
    let mut baseline = BTreeMap::new();
    let mut size_delta = BTreeMap::new();
    for (r, m) in rows.iter().zip(&manifests) {
        versions.push(ComparedVersion {
            version: r.version,
            status: r.status.clone(),
            aliases: r.aliases.clone(),
            digest: r.digest.clone(),
            size: r.size,
            registered_at: r.created_at,
            lineage: m.as_ref().map(|m| json!(m.lineage)),
        });
        if let (Some(b), Some(bm), Some(m)) = (base, base_manifest, m) {
            if r.version != b.version {
                schema_changes_by.insert(key(r), schema_changes(&bm.schema, &m.schema));
                baseline.insert(key(r), baseline_changes(bm, m));
                size_delta.insert(key(r), r.size - b.size);
            }
        }
    }
    Comparison {
        model: base.map(|b| b.model.clone()),
        base: base.map(|b| b.version),
        versions,
        metrics,
        tags,
        size_delta,
        schema_changes: schema_changes_by,
        baseline_changes: baseline,
    }
}

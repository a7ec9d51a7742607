//! `/models/{name}`: a model's versions (aliases, metrics, size,
//! registration, signer, status), one version in detail (schema, tags,
//! lineage, baseline, ModelDoc), choosing versions to compare, and the
//! lifecycle actions the caller's role allows: promote, archive, restore,
//! download, delete, and registering a version by uploading a signed
//! bundle. The actions are forms `dashboard.js` sends, after a
//! confirmation, to the REST endpoints themselves (which refuse, say, a
//! delete while a deployment uses the version; the page shows why).

use super::error::PageResult;
use super::layout::{self, can, Section};
use super::list::ListQuery;
use super::session::Page;
use crate::action::Action;
use crate::api::doc;
use crate::api::query::{parse_name, parse_version};
use crate::api::types::{ManifestDoc, ModelDoc, TensorDoc};
use crate::api::AppState;
use crate::auth::Role;
use crate::registry;
use crate::store::{Filters, ModelSummary};
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};

const PAGE_SIZE: i64 = 50;

/// `GET /models/{name}` (`version`: the one shown in detail; `before`:
/// the versions page).
pub async fn page(
    pg: Page,
    State(st): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> PageResult<Response> {
    let name = parse_name(&name)?;
    pg.auth.authorize(Action::ModelShow, &name).await?;
    pg.auth.authorize(Action::VersionList, &name).await?;
    let tenant = &pg.auth.p.tenant;
    let q = ListQuery::parse(raw.as_deref());
    let before = q.get("before").map(parse_version).transpose()?;
    let chosen = q.get("version").map(parse_version).transpose()?;
    let model = st.store.model(tenant, &name).await?;
    let all = Filters {
        include_archived: true,
        ..Default::default()
    };
    let mut rows = st
        .store
        .list_versions(tenant, &name, &all, before, PAGE_SIZE + 1)
        .await?;
    let more = rows.len() as i64 > PAGE_SIZE;
    rows.truncate(PAGE_SIZE as usize);
    let trust = registry::current_trust(&st.store, tenant).await;
    let docs: Vec<ModelDoc> = rows
        .iter()
        .map(|r| doc::model_doc(&model.project, r, trust.as_ref()))
        .collect();
    let shown = chosen
        .or(model.latest_version)
        .or(docs.first().map(|d| d.version));
    let detail = match shown {
        Some(v) => match docs.iter().find(|d| d.version == v) {
            Some(d) => Some(d.clone()),
            None => {
                let row = st.store.version(tenant, &name, v).await?;
                Some(doc::model_doc(&model.project, &row, trust.as_ref()))
            }
        },
        None => None,
    };
    let older = more
        .then(|| docs.last().map(|d| d.version.to_string()))
        .flatten()
        .map(|v| q.with(&format!("/models/{name}"), &[("before", Some(v.as_str()))]));
    let newer = before.map(|_| q.with(&format!("/models/{name}"), &[("before", None)]));
    let role = pg.auth.p.role;
    // Deleting the only version deletes the model: go to the list after.
    let after_delete = if model.versions <= 1 {
        "/models".to_string()
    } else {
        format!("/models/{name}")
    };
    let body = html! {
        p { a #monitoring-link href={ "/models/" (name) "/monitoring" } { "Monitoring: requests, errors, latency, accuracy and drift" } }
        div #lifecycle {
            (summary(&name, &model))
            @if can(role, Action::AliasSet) {
                (promote_form(&name, &docs))
            }
            (versions(&name, role, &docs, older, newer, &after_delete))
        }
        @if can(role, Action::ModelRegister) {
            (upload_form())
        }
        @if let Some(d) = &detail {
            (version_detail(&name, role, d))
        }
    };
    Ok(layout::page(&pg.chrome(), Section::Models, &name, body).into_response())
}

fn summary(name: &str, m: &ModelSummary) -> Markup {
    html! {
        dl.props {
            dt { "Drift policy" }
            dd {
                a #policy-link href=(format!("/models/{name}/policy")) {
                    "Drift policy, alert rules and retraining triggers"
                }
            }
            dt { "Project" } dd { (m.project) }
            dt { "Versions" } dd { (m.versions) }
            dt { "Latest ready" } dd { @if let Some(v) = m.latest_version { (v) } @else { "none" } }
            dt { "Aliases" }
            dd {
                @if m.aliases.is_empty() { "none" }
                @for (alias, v) in &m.aliases { span.badge { (alias) " → " (v) } " " }
            }
            dt { "Updated" } dd { (layout::when(m.updated_at)) }
        }
    }
}

fn promote_form(name: &str, docs: &[ModelDoc]) -> Markup {
    let ready: Vec<i64> = docs
        .iter()
        .filter(|d| d.status == "ready")
        .map(|d| d.version)
        .collect();
    html! {
        section.card aria-labelledby="promote-h" {
            h2 #promote-h { "Promote" }
            @if ready.is_empty() {
                p { "No ready version on this page to promote." }
            } @else {
                form #promote .inline
                    data-api=(format!("/api/v1/models/{name}/promote"))
                    data-confirm=(format!("Point alias \"{{alias}}\" of {name} at version {{version}}?"))
                    data-done=(format!("Alias {{alias}} of {name} now points at version {{version}}."))
                    data-refresh="#lifecycle" {
                    div.field {
                        label for="promote-version" { "Version" }
                        select #promote-version name="version" data-json="number" {
                            @for v in &ready { option value=(v) { (v) } }
                        }
                    }
                    div.field {
                        label for="promote-alias" { "Alias" }
                        input #promote-alias name="alias" value="champion" required;
                    }
                    div.field { button #promote-button type="submit" { "Promote" } }
                }
            }
        }
    }
}

/// Registering a version: the file `dashboard.js` uploads as
/// `ferry model push` does (`POST /api/v1/models`, the bundle's bytes);
/// the server verifies its signatures against the tenant's trust root.
fn upload_form() -> Markup {
    html! {
        section.card aria-labelledby="upload-h" {
            h2 #upload-h { "Register a version" }
            form #upload .inline data-upload="/api/v1/models" data-refresh="#lifecycle" {
                div.field {
                    label for="bundle-file" { "Signed bundle (.ferry)" }
                    input #bundle-file type="file" name="_bundle" accept=".ferry" required
                        aria-describedby="bundle-hint";
                }
                div.field { button #upload-button type="submit" { "Upload and register" } }
                p.hint #bundle-hint {
                    "Made with ferry bundle build and signed by a publisher key the trust root "
                    "allows; the model and version are the bundle's own."
                }
            }
        }
    }
}

/// Deleting a version: `DELETE` on the REST endpoint, then to `next`.
fn delete_button(name: &str, v: i64, next: &str) -> Markup {
    html! {
        form.inline
            data-api=(format!("/api/v1/models/{name}/versions/{v}"))
            data-method="DELETE"
            data-confirm=(format!("Delete {name} version {v}? Its bundle is removed for good; \
                this cannot be undone."))
            data-done=(format!("{name} version {v} deleted."))
            data-next=(next) {
            button.danger type="submit" { "Delete" span.vh { " version " (v) } }
        }
    }
}

/// One archive or restore button: a form `dashboard.js` confirms and sends.
fn lifecycle_button(name: &str, v: i64, verb: &str, label: &str, warning: &str) -> Markup {
    html! {
        form.inline
            data-api=(format!("/api/v1/models/{name}/versions/{v}/{verb}"))
            data-confirm=(format!("{label} {name} version {v}?{warning}"))
            data-done=(format!("{name} version {v}: {verb} done."))
            data-refresh="#lifecycle" {
            button type="submit" .secondary { (label) span.vh { " version " (v) } }
        }
    }
}

fn versions(
    name: &str,
    role: Role,
    docs: &[ModelDoc],
    older: Option<String>,
    newer: Option<String>,
    after_delete: &str,
) -> Markup {
    html! {
        section #versions aria-labelledby="versions-h" {
            h2 #versions-h { "Versions" }
            form #compare .inline method="get" action=(format!("/models/{name}/compare")) {
                button type="submit" { "Compare selected versions" }
            }
            table {
                caption.vh { "Versions of " (name) }
                thead {
                    tr {
                        th scope="col" { "Compare" }
                        th scope="col" { "Version" }
                        th scope="col" { "Status" }
                        th scope="col" { "Aliases" }
                        th scope="col" { "Metrics" }
                        th scope="col" { "Size" }
                        th scope="col" { "Registered" }
                        th scope="col" { "Signed by" }
                        th scope="col" { "Actions" }
                    }
                }
                tbody {
                    @for d in docs {
                        (version_row(name, role, d, after_delete))
                    }
                }
            }
            (layout::pager(newer, older, "Pages of versions"))
        }
    }
}

fn version_row(name: &str, role: Role, d: &ModelDoc, after_delete: &str) -> Markup {
    let v = d.version;
    let check = format!("compare-{v}");
    html! {
        tr {
            td {
                input type="checkbox" id=(check) name="v" value=(v) form="compare";
                label.vh for=(check) { "Compare version " (v) }
            }
            td { a href=(format!("/models/{name}?version={v}#detail")) { (v) } }
            td { span class=(format!("status {}", d.status)) { (d.status) } }
            td { @for a in &d.aliases { span.badge { (a) } " " } }
            td {
                @if let Some(m) = &d.manifest {
                    @for (k, x) in &m.metrics { span.metric { (k) " " (layout::num(*x)) } " " }
                }
            }
            td { (layout::size(d.size)) }
            td { (layout::when(d.registered_at)) br; span.muted { (d.registered_by) } }
            td { (signers(d)) }
            td.actions {
                @if can(role, Action::VersionDownload) {
                    a href=(format!("/api/v1/models/{name}/versions/{v}/bundle")) download {
                        "Download" span.vh { " version " (v) }
                    }
                    " "
                }
                @if d.status == "ready" && can(role, Action::VersionArchive) {
                    (lifecycle_button(name, v, "archive", "Archive",
                        " It will no longer be listed by default or deployable."))
                }
                @if d.status == "archived" && can(role, Action::VersionRestore) {
                    (lifecycle_button(name, v, "restore", "Restore", ""))
                }
                @if can(role, Action::VersionDelete) {
                    " " (delete_button(name, v, after_delete))
                }
            }
        }
    }
}

fn signers(d: &ModelDoc) -> Markup {
    html! {
        @for s in &d.signatures {
            span.signer {
                @if let Some(p) = &s.publisher { (p) " " } @else { "unknown key " }
                code title=(s.key_id) { (layout::short(&s.key_id)) }
            }
        }
    }
}

fn tensors(caption: &str, t: &[TensorDoc]) -> Markup {
    html! {
        table.compact {
            caption { (caption) }
            thead { tr { th scope="col" { "Name" } th scope="col" { "Type" } th scope="col" { "Shape" } } }
            tbody {
                @for x in t {
                    tr { td { code { (x.name) } } td { (x.datatype) } td { code { (x.shape) } } }
                }
            }
        }
    }
}

fn manifest_detail(m: &ManifestDoc) -> Markup {
    let lineage: Vec<(String, String)> = m
        .lineage
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_string),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    html! {
        h3 { "Schema" }
        div.tables {
            (tensors("Inputs", &m.schema.inputs))
            (tensors("Outputs", &m.schema.outputs))
        }
        h3 { "Metrics" }
        @if m.metrics.is_empty() { p { "None recorded." } }
        dl.props { @for (k, v) in &m.metrics { dt { (k) } dd { (layout::num(*v)) } } }
        h3 { "Tags" }
        @if m.tags.is_empty() { p { "None." } }
        dl.props { @for (k, v) in &m.tags { dt { (k) } dd { (v) } } }
        h3 { "Lineage" }
        @if lineage.is_empty() { p { "None recorded." } }
        dl.props { @for (k, v) in &lineage { dt { (k) } dd { (v) } } }
        h3 { "Drift baseline" }
        @match &m.baseline {
            None => p { "No baseline: drift is not measured for this version." },
            Some(b) => {
                p { (b.rows) " reference rows, " (b.features.len()) " features." }
                table.compact {
                    caption.vh { "Baseline features" }
                    thead {
                        tr {
                            th scope="col" { "Feature" } th scope="col" { "Kind" } th scope="col" { "Bins" }
                            th scope="col" { "Min" } th scope="col" { "Max" } th scope="col" { "Categories" }
                        }
                    }
                    tbody {
                        @for f in &b.features {
                            tr {
                                td { (f.name) } td { (f.kind) }
                                td { @if let Some(x) = f.bins { (x) } }
                                td { @if let Some(x) = f.min { (layout::num(x)) } }
                                td { @if let Some(x) = f.max { (layout::num(x)) } }
                                td { @if let Some(x) = f.categories { (x) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn version_detail(name: &str, role: Role, d: &ModelDoc) -> Markup {
    let v = d.version;
    html! {
        section #detail .card aria-labelledby="detail-h" {
            h2 #detail-h { "Version " (v) }
            dl.props {
                dt { "Status" } dd { (d.status) }
                dt { "Digest" } dd { code { (d.digest) } }
                dt { "Size" } dd { (layout::size(d.size)) }
                dt { "Registered" } dd { (layout::when(d.registered_at)) " by " (d.registered_by) }
                dt { "Signed by" } dd { (signers(d)) }
                dt { "ModelDoc" }
                dd {
                    a href=(format!("/api/v1/models/{name}/versions/{v}")) { "Full metadata (JSON)" }
                    @if can(role, Action::VersionDownload) {
                        " · "
                        a href=(format!("/api/v1/models/{name}/versions/{v}/bundle")) download {
                            "Download the signed bundle"
                        }
                    }
                }
            }
            @if let Some(m) = &d.manifest {
                (manifest_detail(m))
            } @else {
                p.error { "The stored manifest of this version does not decode." }
            }
        }
    }
}

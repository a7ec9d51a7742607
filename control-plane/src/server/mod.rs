//! `ferry server`: opens the store and the artifact store, bootstraps the
//! first admin token, and serves the API until SIGINT/SIGTERM.

pub mod openapi;
pub mod tls;

pub use openapi::{document, DOCUMENT_PATH};

use crate::api::rollouts::RolloutsState;
use crate::api::{self, AppState, Limits};
use crate::audit::{AuditEntry, OUTCOME_OK};
use crate::auth::{self, Role};
use crate::blobs::{BlobError, Blobs, S3Options};
use crate::config::ServerConfig;
use crate::fleet::api::FleetState;
use crate::fleet::Fleet;
use crate::rollout_driver::RolloutDriver;
use crate::store::{Store, StoreError};
use axum::Router;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Blobs(#[from] BlobError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    #[error("{0}")]
    Fleet(#[from] crate::fleet::FleetError),
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("--webhook-allow: {0}")]
    WebhookAllow(String),
    #[error("FERRY_BOOTSTRAP_TOKEN is not a Ferry token (fy_ followed by 64 hex digits); generate one with `ferry token generate`")]
    BadBootstrapToken,
}

/// Opens everything the server needs; separate from [`serve`] so tests and
/// tools can use the same wiring.
pub async fn open(cfg: &ServerConfig) -> Result<AppState, ServerError> {
    #[cfg(feature = "failpoints")]
    failpoints_from_env();
    let io = |what: String| move |source| ServerError::Io { what, source };
    std::fs::create_dir_all(&cfg.data).map_err(io(format!("creating {}", cfg.data.display())))?;
    let tmp = cfg.data.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    let store = Store::connect(&cfg.database, cfg.db_max_connections).await?;
    let blobs = match &cfg.artifacts {
        Some(url) if url.starts_with("file://") => {
            Blobs::local(std::path::Path::new(url.trim_start_matches("file://")))?
        }
        Some(url) => Blobs::s3(
            url,
            &S3Options {
                endpoint: cfg.s3_endpoint.clone(),
                region: cfg.s3_region.clone(),
            },
        )?,
        None => Blobs::local(&cfg.data.join("artifacts"))?,
    };
    bootstrap(&store, cfg).await?;
    Ok(AppState::new(
        store,
        blobs,
        tmp,
        Limits {
            max_upload: cfg.max_upload_bytes,
            rate_per_minute: cfg.rate_limit_per_minute,
            root_tenant: cfg.root_tenant.clone(),
            secure_cookies: cfg.tls.is_some(),
        },
    ))
}

/// Test builds only: sets the failpoints named in `FAILPOINTS`
/// (`name=actions;…`, the `fail` crate's syntax).
#[cfg(feature = "failpoints")]
fn failpoints_from_env() {
    let Ok(spec) = std::env::var("FAILPOINTS") else {
        return;
    };
    for item in spec.split(';').filter(|s| !s.trim().is_empty()) {
        let Some((name, actions)) = item.split_once('=') else {
            tracing::warn!(item, "FAILPOINTS entry is not name=actions");
            continue;
        };
        if let Err(e) = fail::cfg(name.trim(), actions.trim()) {
            tracing::warn!(item, error = %e, "FAILPOINTS entry refused");
        }
    }
}

/// On an empty database, creates the first admin token of the root tenant:
/// `FERRY_BOOTSTRAP_TOKEN` when set (several replicas may race; the token is
/// stored once), else a fresh one printed to stdout.
async fn bootstrap(store: &Store, cfg: &ServerConfig) -> Result<(), ServerError> {
    let entry = || AuditEntry {
        tenant: cfg.root_tenant.clone(),
        request_id: "bootstrap".into(),
        actor: "ferry server".into(),
        action: "token.bootstrap".into(),
        target: String::new(),
        outcome: OUTCOME_OK.into(),
        detail: "first admin token".into(),
    };
    if let Some(t) = &cfg.bootstrap_token {
        if !auth::well_formed(t) {
            return Err(ServerError::BadBootstrapToken);
        }
        if store.token_count().await? == 0 {
            store
                .insert_token_if_absent(
                    &cfg.root_tenant,
                    "bootstrap",
                    Role::Admin,
                    &auth::hash_token(t),
                    entry(),
                )
                .await?;
        }
        return Ok(());
    }
    if store.token_count().await? == 0 {
        let t = auth::generate_token();
        if store
            .insert_token_if_absent(
                &cfg.root_tenant,
                "bootstrap",
                Role::Admin,
                &auth::hash_token(&t),
                entry(),
            )
            .await?
        {
            println!(
                "first admin token for tenant {:?} (shown once): {t}",
                cfg.root_tenant
            );
        }
    }
    Ok(())
}

/// Binds and serves until SIGINT or SIGTERM. Prints the bound address
/// (useful with port 0) on stdout.
pub async fn serve(cfg: ServerConfig) -> Result<(), ServerError> {
    serve_with(cfg, None).await
}

/// [`serve`], plus the fleet's QUIC endpoint and REST routes when `fleet`
/// is given (`ferry server --quic ADDR`).
pub async fn serve_with(
    cfg: ServerConfig,
    fleet: Option<crate::fleet::FleetOptions>,
) -> Result<(), ServerError> {
    crate::telemetry::webhook::allow_networks(&cfg.webhook_allow)
        .map_err(ServerError::WebhookAllow)?;
    let tls = match &cfg.tls {
        Some((cert, key)) => Some(tls::server_config(cert, key)?),
        None => None,
    };
    let state = open(&cfg).await?;
    let _telemetry = crate::telemetry::start(&state.store, &cfg.telemetry, &cfg.data).await?;
    let describe_blobs = state.blobs.describe().to_string();
    let listener = tokio::net::TcpListener::bind(cfg.http)
        .await
        .map_err(|source| ServerError::Io {
            what: format!("binding {}", cfg.http),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Io {
        what: "reading the bound address".into(),
        source,
    })?;
    let db = match state.store.backend() {
        crate::store::Backend::Sqlite => "sqlite",
        crate::store::Backend::Postgres => "postgres",
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!(
        "ferry server listening on {scheme}://{addr} (metadata: {db}, artifacts: {describe_blobs})"
    );
    if tls.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "the REST API is plain HTTP on a non-loopback address: bearer tokens cross the network in clear; use --tls-cert/--tls-key or a TLS gateway"
        );
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let mut fleet_state = None;
    let mut _quic = None;
    let mut _rollouts = None;
    if let Some(mut opts) = fleet {
        if opts.mqtt_url.is_none() {
            opts.mqtt_url = _telemetry.as_ref().map(|t| t.advertised_url.clone());
        }
        let fleet = Fleet::open(state.store.clone(), state.blobs.clone(), &cfg.data, opts).await?;
        let (endpoint, quic) = fleet.start_quic()?;
        println!("ferry fleet listening on quic://{quic}");
        let _ = std::io::stdout().flush();
        let driver =
            RolloutDriver::new(fleet.clone(), _telemetry.as_ref().map(|t| t.engine.clone()));
        println!("ferry rollouts driven by replica {}", driver.holder);
        let _ = std::io::stdout().flush();
        _rollouts = Some(driver.spawn());
        fleet_state = Some((fleet, driver));
        _quic = Some(endpoint);
    }
    // Failed logins are audited as one summary per source and minute.
    let sweeper = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                api::auth::audit_failed_logins(&state, false).await;
            }
        })
    };
    let metrics = crate::telemetry::metrics::routes(_telemetry.as_ref().map(|t| t.engine.clone()));
    let service = app(state.clone(), fleet_state)
        .merge(metrics)
        .into_make_service_with_connect_info::<api::auth::PeerAddr>();
    let served = match tls {
        Some(cfg) => {
            let listener =
                tls::TlsListener::new(listener, cfg).map_err(|source| ServerError::Io {
                    what: "starting the TLS listener".into(),
                    source,
                })?;
            axum::serve(listener, service)
                .with_graceful_shutdown(shutdown())
                .await
        }
        None => {
            axum::serve(listener, service)
                .with_graceful_shutdown(shutdown())
                .await
        }
    };
    sweeper.abort();
    api::auth::audit_failed_logins(&state, true).await;
    served.map_err(|source| ServerError::Io {
        what: "serving".into(),
        source,
    })
}

/// Every route of the server: the registry, telemetry, the OpenAPI
/// document, the web dashboard, and the fleet when it runs. Unknown paths answer a JSON 404;
/// every response carries the request id.
pub fn app(state: AppState, fleet: Option<(Arc<Fleet>, Arc<RolloutDriver>)>) -> Router {
    let (registry, _) = api::routes().split_for_parts();
    let (telemetry, _) = crate::telemetry::api::routes().split_for_parts();
    let (doc, _) = openapi::routes().split_for_parts();
    let mut router = registry
        .merge(telemetry)
        .merge(doc)
        .merge(crate::dashboard::routes(
            fleet.as_ref().map(|(_, d)| d.clone()),
        ))
        .with_state(state.clone());
    if let Some((fleet, driver)) = fleet {
        let (routes, _) = crate::fleet::api::routes().split_for_parts();
        router = router.merge(routes.with_state(FleetState {
            app: state.clone(),
            fleet,
        }));
        let (routes, _) = api::rollouts::routes().split_for_parts();
        router = router.merge(routes.with_state(RolloutsState { app: state, driver }));
    }
    router
        .fallback(api::error::no_route)
        .layer(axum::middleware::from_fn(api::auth::request_id))
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

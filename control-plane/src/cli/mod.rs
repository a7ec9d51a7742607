//! Command-line front end: argument parsing and dispatch. Errors here are
//! `anyhow` (this is the binary's edge); the work is done by the typed
//! library modules.

mod alerts;
mod audit;
mod broker;
mod challenger;
// `BundleCmd::Build` carries every build flag; it is parsed once per run.
#[allow(clippy::large_enum_variant)]
mod bundle;
mod conn;
pub mod coverage;
mod demo;
mod deployments;
mod device;
mod drift;
mod key;
mod login;
mod model;
mod output;
mod project;
mod rollout;
mod series;
mod server;
mod token;
mod triggers;
mod trust;
mod trust_root;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    version,
    about = "Ferry: signed ML models for edge fleets"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Publisher and root keys (generated and kept on the operator's machine)
    #[command(subcommand)]
    Key(key::KeyCmd),
    /// Trust roots: which keys may sign which models (push: set it on the server)
    #[command(subcommand)]
    Trust(trust_root::TrustAll),
    /// Build, verify and inspect signed model bundles
    #[command(subcommand)]
    Bundle(bundle::BundleCmd),
    /// Run the control plane server (REST API under /api/v1)
    Server(server::ServerArgs),
    /// Store the server URL and token for the commands below
    Login(login::LoginArgs),
    /// Who the token is: name, tenant, role
    Whoami(login::WhoamiArgs),
    /// Whether the server answers (no token needed)
    Health(login::HealthArgs),
    /// The web dashboard's address, as a one-time sign-in link for this token
    Dashboard(login::DashboardArgs),
    /// The model registry: push, list, show, versions, compare, promote, aliases, metrics, archive, delete, download
    Model(model::ModelArgs),
    /// Projects: groups of models
    Project(project::ProjectArgs),
    /// API tokens (admin)
    Token(token::TokenArgs),
    /// The tamper-evident audit trail
    Audit(audit::AuditArgs),
    /// Fleet devices: enrollment tokens, list, label, revoke, health
    Device(device::DeviceArgs),
    /// Deploy a model version to the devices matching a selector
    Deploy(deployments::DeployArgs),
    /// Deployments and their per-device state; scale: a new selector
    Deployments(deployments::DeploymentsArgs),
    /// Remove a deployment from the devices' desired state
    Undeploy(deployments::UndeployArgs),
    /// Rollouts in waves with gates: start, list, show, pause, resume, approve, abort, policy
    Rollout(rollout::RolloutArgs),
    /// Alerts raised from device telemetry: list, acknowledge
    Alerts(alerts::AlertsArgs),
    /// A model's drift policy (config get|set) and PSI per window (series)
    Drift(drift::DriftArgs),
    /// Retraining triggers fired (list) and where and when they fire (set)
    Triggers(triggers::TriggersArgs),
    /// Run a control plane and one enrolled agent serving a signed demo
    /// model on localhost, until Ctrl-C
    Demo(demo::DemoArgs),
    /// Certificates for an external MQTT broker that authenticates devices (deploy/mosquitto)
    #[command(subcommand)]
    Broker(broker::BrokerCmd),
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Key(c) => key::run(c),
        Command::Trust(c) => trust_root::trust(c),
        Command::Bundle(c) => bundle::run(c),
        Command::Server(a) => server::run(a),
        Command::Login(a) => login::login(a),
        Command::Whoami(a) => login::whoami(a),
        Command::Health(a) => login::health(a),
        Command::Dashboard(a) => login::dashboard(a),
        Command::Model(a) => model::model(a),
        Command::Project(a) => project::project(a),
        Command::Token(a) => token::token(a),
        Command::Audit(a) => audit::audit_cmd(a),
        Command::Device(a) => device::device(a),
        Command::Deploy(a) => deployments::deploy(a),
        Command::Deployments(a) => deployments::deployments(a),
        Command::Undeploy(a) => deployments::undeploy(a),
        Command::Rollout(a) => rollout::rollout(a),
        Command::Alerts(a) => alerts::alerts(a),
        Command::Drift(a) => drift::drift(a),
        Command::Triggers(a) => triggers::triggers(a),
        Command::Demo(a) => demo::demo(a),
        Command::Broker(c) => broker::run(c),
    }
}

/// Parses `key=value`.
pub(crate) fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// Parses a duration such as `90s`, `24h`, `365d`.
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (try 24h or 365d)"))
}

//! The serving core without HTTP: route and run decoded inputs the way a
//! batch scorer or another front end would, and the clock an agent is given
//! is the one it reads (log times, bundle expiry).
#![allow(clippy::unwrap_used)]

mod common;

use common::{now, reference_rows, Keys};
use ferry_agent::clock::FixedClock;
use ferry_agent::engine::Input;
use ferry_agent::inference_log::Entry;
use ferry_agent::serving::{Agent, AgentOptions, InferError, Role};
use ferry_protocol::TensorData;
use std::sync::Arc;

fn options(keys: &Keys, data: &std::path::Path, clock: Arc<FixedClock>) -> AgentOptions {
    AgentOptions {
        clock,
        ..keys.options(data)
    }
}

fn one_row(model: &str) -> Vec<Input> {
    let row: Vec<f32> = reference_rows(model)[0].iter().map(|x| *x as f32).collect();
    vec![Input {
        shape: vec![1, row.len()],
        data: TensorData::F32(row),
    }]
}

#[test]
fn route_and_run_serve_decoded_inputs_without_the_http_codec() {
    let keys = Keys::new();
    let data = tempfile::tempdir().unwrap();
    let at_ms = now() * 1000 + 123;
    let clock = Arc::new(FixedClock::at_ms(at_ms));
    let agent = Agent::open(options(&keys, data.path(), clock)).unwrap();
    agent
        .install(&keys.bundle("bc_logreg", "m", 1), Role::Champion, None)
        .unwrap();
    agent
        .install(
            &keys.bundle("bc_logreg", "m", 2),
            Role::Challenger,
            Some(1.0),
        )
        .unwrap();

    let table = agent.table();
    // Split 1.0: every key goes to the challenger; a pinned version wins.
    let routing = agent.route(&table, "m", None).unwrap();
    let route = routing.pick(Some("user-1"));
    assert_eq!((route.version(), route.variant()), (2, "challenger"));
    assert!(routing.shadow().is_none());
    let pinned = agent
        .route(&table, "m", Some("1"))
        .unwrap()
        .pick(Some("user-1"));
    assert_eq!((pinned.version(), pinned.variant()), (1, "champion"));

    let outputs = route.run(Some("req-1"), &one_row("bc_logreg")).unwrap();
    assert!(!outputs.is_empty());
    agent.log.flush().unwrap();
    let records = agent.log.read_from(0, 10).unwrap();
    let Some((_, Entry::Inference(r))) = records.last() else {
        panic!("no inference record: {records:?}");
    };
    assert_eq!(
        (
            r.time_ms,
            r.version,
            r.variant.as_str(),
            r.request_id.as_deref()
        ),
        (at_ms, 2, "challenger", Some("req-1"))
    );

    // What is not there is refused before anything runs.
    assert!(matches!(
        agent.route(&table, "m", Some("7")),
        Err(InferError::UnknownVersion { .. })
    ));
    assert!(matches!(
        agent.route(&table, "nope", None),
        Err(InferError::UnknownModel(_))
    ));
}

#[test]
fn the_clock_given_to_the_agent_decides_bundle_expiry() {
    let keys = Keys::new();
    let data = tempfile::tempdir().unwrap();
    // The trust root expires a day from now; this agent lives two days on.
    let clock = Arc::new(FixedClock::at_ms((now() + 2 * 86_400) * 1000));
    let agent = Agent::open(options(&keys, data.path(), clock.clone())).unwrap();
    let bundle = keys.bundle("bc_logreg", "m", 1);
    let e = agent.install(&bundle, Role::Champion, None).unwrap_err();
    assert_eq!(e.code(), "trust_root_expired", "{e}");
    assert!(!agent.ready());
    // Back to today: the same bundle verifies.
    clock.set_ms(now() * 1000);
    agent.install(&bundle, Role::Champion, None).unwrap();
    assert!(agent.ready());
}

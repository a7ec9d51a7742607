//! The request path, without a wire codec: [`Agent::route`] finds what may
//! answer a request, [`Routing::pick`] chooses champion or challenger,
//! [`RouteRef::run`] runs decoded inputs, records metrics and drift, and
//! appends the inference log record. HTTP (and any other front end) decodes
//! and encodes around it.
//!
//! Everything here borrows from the table the caller loaded: no lock, no
//! reference count touched per request.

use super::error::InferError;
use super::routing::{routing_hash, ModelRoutes, Route, Table};
use super::Agent;
use crate::engine::{Input, Output, RunError};
use crate::inference_log::{Entry, FeedbackRecord, InferenceRecord};
use crate::telemetry::window::Observation;
use ferry_protocol::{Schema, Tensor, TensorData};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// The routes one request may take: a pinned version, or the model's
/// champion, challenger and shadow.
pub struct Routing<'t> {
    agent: &'t Arc<Agent>,
    model: &'t str,
    routes: &'t ModelRoutes,
    pinned: Option<&'t Route>,
}

/// One route, ready to run requests.
#[derive(Clone, Copy)]
pub struct RouteRef<'t> {
    agent: &'t Arc<Agent>,
    model: &'t str,
    route: &'t Route,
}

impl Agent {
    /// Where a request for `model` may go; `pinned` is the version from
    /// `/versions/{v}/infer`. Counts the refusal when there is none.
    pub fn route<'t>(
        self: &'t Arc<Self>,
        table: &'t Table,
        model: &'t str,
        pinned: Option<&str>,
    ) -> Result<Routing<'t>, InferError> {
        let Some(routes) = table.models.get(model) else {
            // One label for every unknown name: clients must not be able to
            // grow the metrics without bound.
            self.metrics.rejected("(unknown)", "unknown_model");
            return Err(InferError::UnknownModel(model.into()));
        };
        let pinned = match pinned {
            None => None,
            Some(v) => match routes.by_version_text(v) {
                Some(r) => Some(r),
                None => {
                    let e = InferError::UnknownVersion {
                        model: model.into(),
                        version: v.into(),
                    };
                    self.metrics.rejected(model, e.code());
                    return Err(e);
                }
            },
        };
        Ok(Routing {
            agent: self,
            model,
            routes,
            pinned,
        })
    }

    /// Counts a request the front end refused before it reached a route
    /// (it could not be decoded, for instance). A name that is not loaded
    /// is counted as `(unknown)`: a client must not be able to grow the
    /// metrics by making up names.
    pub fn rejected(&self, model: &str, code: &str) {
        let label = if self.table().models.contains_key(model) {
            model
        } else {
            "(unknown)"
        };
        self.metrics.rejected(label, code);
    }

    /// Appends a ground-truth label for an earlier request.
    pub fn feedback(
        &self,
        model: &str,
        request_id: String,
        label_json: String,
    ) -> Result<u64, InferError> {
        if !self.table.load().models.contains_key(model) {
            return Err(InferError::UnknownModel(model.into()));
        }
        self.telemetry.feedback(&request_id, &label_json);
        Ok(self.log.append(&Entry::Feedback(FeedbackRecord {
            time_ms: self.clock.now_ms(),
            model: model.into(),
            request_id,
            label_json,
        }))?)
    }

    /// Runs `inputs` on `route`, records metrics and drift and appends the
    /// log record.
    fn run_and_log(
        &self,
        route: &Route,
        model: &str,
        request_id: Option<&str>,
        inputs: &[Input],
    ) -> Result<Vec<Output>, InferError> {
        let manifest = &route.loaded.manifest;
        let seq = self.counter.fetch_add(1, Ordering::Relaxed);
        let sampled = self.sample_threshold > 0
            && routing_hash(&[&seq.to_le_bytes(), request_id.unwrap_or("").as_bytes()])
                <= self.sample_threshold;
        let bins = match (&manifest.baseline, inputs.first()) {
            (Some(b), Some(input)) => bin_rows(b, input),
            _ => Vec::new(),
        };
        let payload = sampled.then(|| {
            inputs
                .iter()
                .zip(&manifest.schema.inputs)
                .map(|(i, s)| Tensor {
                    name: s.name.clone(),
                    shape: i.shape.iter().map(|d| *d as u64).collect(),
                    data: i.data.clone(),
                })
                .collect()
        });
        let start = Instant::now();
        let mut result = match &route.loaded.batcher {
            Some(b) => b.run(inputs.to_vec()),
            None => route.loaded.engine.run(inputs.to_vec()),
        };
        if crate::failpoint::fails_for_version("serving-infer-error", manifest.version) {
            result = Err(RunError::Exec("injected failure (failpoint)".into()));
        }
        let elapsed = start.elapsed();
        route.series.observe(elapsed.as_secs_f64(), result.is_ok());
        let latency_us = elapsed.as_micros().min(u128::from(u32::MAX)) as u32;
        let now_ms = self.clock.now_ms();
        self.telemetry.observe(Observation {
            model,
            manifest,
            variant: route.variant,
            input: inputs.first(),
            bins: &bins,
            outputs: result.as_deref().ok(),
            latency_us,
            request_id,
            now_ms,
        });
        let (outputs, error) = match &result {
            Ok(o) => (
                o.iter()
                    .map(|o| Tensor {
                        name: o.name.clone(),
                        shape: o.shape.iter().map(|d| *d as u64).collect(),
                        data: o.data.clone(),
                    })
                    .collect(),
                None,
            ),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        let record = InferenceRecord {
            time_ms: now_ms,
            model: model.to_string(),
            version: manifest.version,
            variant: route.variant.to_string(),
            latency_us,
            request_id: request_id.map(str::to_string),
            error,
            outputs,
            bins,
            payload,
        };
        self.log.append(&Entry::Inference(record))?;
        Ok(result?)
    }
}

impl<'t> Routing<'t> {
    /// The schema to decode the request against first: the pinned
    /// version's, else the champion's.
    pub fn schema(&self) -> &'t Schema {
        &self
            .pinned
            .unwrap_or(&self.routes.champion)
            .loaded
            .manifest
            .schema
    }

    /// The inputs the publisher fixed for the version [`Routing::schema`]
    /// belongs to.
    pub fn fixed(&self) -> &'t [Tensor] {
        &self
            .pinned
            .unwrap_or(&self.routes.champion)
            .loaded
            .manifest
            .const_inputs
    }

    /// The pinned route, or champion or challenger by the split. `key`
    /// (the client's routing key or request id) keeps a user on one
    /// variant; without one, requests are spread by a counter.
    pub fn pick(&self, key: Option<&str>) -> RouteRef<'t> {
        let route = match (self.pinned, &self.routes.challenger) {
            (Some(r), _) => r,
            (None, None) => &self.routes.champion,
            (None, Some(_)) => match key {
                Some(k) => self.routes.pick(self.model, k),
                None => {
                    let n = self.agent.counter.fetch_add(1, Ordering::Relaxed);
                    self.routes.pick(self.model, &n.to_string())
                }
            },
        };
        self.route_ref(route)
    }

    /// The shadow, which sees a copy of every unpinned request.
    pub fn shadow(&self) -> Option<RouteRef<'t>> {
        match self.pinned {
            Some(_) => None,
            None => self.routes.shadow.as_ref().map(|r| self.route_ref(r)),
        }
    }

    fn route_ref(&self, route: &'t Route) -> RouteRef<'t> {
        RouteRef {
            agent: self.agent,
            model: self.model,
            route,
        }
    }
}

impl<'t> RouteRef<'t> {
    /// The schema inputs must be decoded against for this route.
    pub fn schema(&self) -> &'t Schema {
        &self.route.loaded.manifest.schema
    }

    /// The inputs the publisher fixed for this route's version.
    pub fn fixed(&self) -> &'t [Tensor] {
        &self.route.loaded.manifest.const_inputs
    }

    pub fn version(&self) -> u64 {
        self.route.version()
    }

    /// Whether this version's signed manifest accepts NaN and infinite
    /// inputs (`ferry.non_finite_inputs = accept`).
    pub fn accepts_non_finite(&self) -> bool {
        self.route.loaded.manifest.accepts_non_finite()
    }

    pub fn variant(&self) -> &'static str {
        self.route.variant
    }

    /// Runs one request's inputs (in schema order, validated against
    /// [`RouteRef::schema`]). A failure is counted against the model.
    pub fn run(
        &self,
        request_id: Option<&str>,
        inputs: &[Input],
    ) -> Result<Vec<Output>, InferError> {
        let r = self
            .agent
            .run_and_log(self.route, self.model, request_id, inputs);
        if let Err(e) = &r {
            self.agent.metrics.rejected(self.model, e.code());
        }
        r
    }

    /// Runs a request off the caller's path (the shadow): logged, never
    /// returned, and the caller never waits for it.
    /// At most `shadow::MAX_SHADOW_IN_FLIGHT` copies run or wait at once;
    /// past that a copy is dropped and counted in `/metrics`.
    pub fn spawn(&self, request_id: Option<String>, inputs: Vec<Input>) {
        let Some(slot) = self.agent.shadow_slots.try_take() else {
            self.agent.metrics.shadow_dropped(self.model);
            return;
        };
        let agent = self.agent.clone();
        let route = self.route.clone();
        let model = self.model.to_string();
        let job = move || {
            let _ = agent.run_and_log(&route, &model, request_id.as_deref(), &inputs);
            drop(slot);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => drop(h.spawn_blocking(job)),
            Err(_) => drop(
                std::thread::Builder::new()
                    .name("ferry-shadow".into())
                    .spawn(job),
            ),
        }
    }
}

/// Bins each row of a `[rows, features]` input against the baseline.
fn bin_rows(b: &ferry_protocol::Baseline, input: &Input) -> Vec<Vec<u8>> {
    let width = b.features.len();
    if input.shape.len() != 2 || input.shape[1] != width || width == 0 {
        return Vec::new();
    }
    let row_f64 = |vals: &mut dyn Iterator<Item = f64>| -> Vec<u8> {
        b.features
            .iter()
            .zip(vals)
            .map(|(f, x)| f.bin_f64(x))
            .collect()
    };
    match &input.data {
        TensorData::F32(v) => v
            .chunks_exact(width)
            .map(|r| row_f64(&mut r.iter().map(|x| f64::from(*x))))
            .collect(),
        TensorData::F64(v) => v
            .chunks_exact(width)
            .map(|r| row_f64(&mut r.iter().copied()))
            .collect(),
        TensorData::I64(v) => v
            .chunks_exact(width)
            .map(|r| row_f64(&mut r.iter().map(|x| *x as f64)))
            .collect(),
        _ => Vec::new(),
    }
}

//! The thread that drives one model version's [`BatchQueue`]: it takes
//! requests off a channel, asks the queue what runs when, runs each batch
//! on the engine and hands every request its own rows back.

use super::queue::BatchQueue;
use super::stack::{self, StackKey};
use super::BatchStats;
use crate::engine::Engine;
use crate::tensors::{Input, Output, RunError};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub type Answer = Result<Vec<Output>, RunError>;

/// One request waiting for its batch.
pub struct Job {
    pub inputs: Vec<Input>,
    pub reply: SyncSender<Answer>,
}

/// A [`Job`] on its way to the worker, with what the queue sorts it by.
pub struct Queued {
    pub key: StackKey,
    pub rows: usize,
    pub job: Job,
}

pub struct Worker {
    pub engine: Engine,
    pub queue: BatchQueue<StackKey, Job>,
    pub stats: Arc<BatchStats>,
}

impl Worker {
    /// Runs until every sender is gone, then answers what still waits.
    pub fn run(mut self, rx: Receiver<Queued>) {
        let origin = Instant::now();
        let now_us = || origin.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
        loop {
            let next = match self.queue.deadline_us() {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(d) => rx.recv_timeout(Duration::from_micros(d.saturating_sub(now_us()))),
            };
            match next {
                Ok(job) => self.push(job, now_us()),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // Everything that arrived meanwhile joins before deciding.
            while let Ok(job) = rx.try_recv() {
                self.push(job, now_us());
            }
            while let Some(batch) = self.queue.pop_ready(now_us()) {
                self.execute(batch);
            }
        }
        for batch in self.queue.drain() {
            self.execute(batch);
        }
    }

    fn push(&mut self, q: Queued, now_us: u64) {
        self.queue.push(q.key, q.rows, now_us, q.job);
    }

    fn execute(&self, batch: Vec<(usize, Job)>) {
        let (rows, mut jobs): (Vec<usize>, Vec<Job>) = batch.into_iter().unzip();
        self.stats.record(jobs.len());
        if jobs.len() == 1 {
            if let Some(job) = jobs.pop() {
                let _ = job.reply.send(self.engine.run(job.inputs));
            }
            return;
        }
        let parts: Vec<&[Input]> = jobs.iter().map(|j| j.inputs.as_slice()).collect();
        let stacked = self.engine.run(stack::stack(&parts));
        match stacked
            .ok()
            .and_then(|outputs| stack::split(outputs, &rows))
        {
            Some(answers) => {
                for (job, answer) in jobs.iter().zip(answers) {
                    let _ = job.reply.send(Ok(answer));
                }
            }
            // The batch failed (one request's values, say) or its outputs
            // are not per row: each request runs alone and gets its own
            // answer, so one bad request never fails the others.
            None => {
                self.stats.unstacked();
                for job in jobs {
                    let _ = job.reply.send(self.engine.run(job.inputs));
                }
            }
        }
    }
}

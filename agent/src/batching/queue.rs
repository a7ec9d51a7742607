//! The dynamic batcher's decisions, without threads or a clock: which
//! waiting requests run together, and when. Time is an argument
//! (microseconds from any origin), so the policy is tested on a fake clock;
//! `super::worker` drives it with a channel and a real one.
//!
//! The policy is Triton's dynamic batcher without preferred sizes: a batch
//! runs as soon as it holds `max_rows` rows, or when its oldest request has
//! waited `max_delay_us`. Only requests whose inputs agree on everything but
//! the first dimension (dtype and the other dimensions, the `key`) can run
//! together; the oldest request's key decides each batch, so no request
//! waits behind later ones of another shape.

use std::collections::VecDeque;

struct Waiting<K, T> {
    key: K,
    rows: usize,
    since_us: u64,
    item: T,
}

pub struct BatchQueue<K, T> {
    max_rows: usize,
    max_delay_us: u64,
    waiting: VecDeque<Waiting<K, T>>,
}

impl<K: Eq, T> BatchQueue<K, T> {
    /// `max_rows` is at least 1.
    pub fn new(max_rows: usize, max_delay_us: u64) -> Self {
        Self {
            max_rows: max_rows.max(1),
            max_delay_us,
            waiting: VecDeque::new(),
        }
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Queues a request of `rows` rows that arrived at `now_us`. The caller
    /// runs a request of more than `max_rows` rows alone instead.
    pub fn push(&mut self, key: K, rows: usize, now_us: u64, item: T) {
        self.waiting.push_back(Waiting {
            key,
            rows,
            since_us: now_us,
            item,
        });
    }

    /// When the oldest request's wait runs out; `None` when nothing waits.
    pub fn deadline_us(&self) -> Option<u64> {
        self.waiting
            .front()
            .map(|w| w.since_us.saturating_add(self.max_delay_us))
    }

    /// The next batch to run at `now_us`, oldest request first, with each
    /// request's row count; `None` while the oldest can still wait for more.
    pub fn pop_ready(&mut self, now_us: u64) -> Option<Vec<(usize, T)>> {
        let oldest = self.waiting.front()?;
        let mut rows = 0usize;
        let mut members = Vec::new();
        let mut full = false;
        for (i, w) in self.waiting.iter().enumerate() {
            if w.key != oldest.key {
                continue;
            }
            // (An oversized oldest request still runs, alone.)
            if rows + w.rows > self.max_rows && !members.is_empty() {
                full = true;
                break;
            }
            rows += w.rows;
            members.push(i);
            if rows >= self.max_rows {
                full = true;
                break;
            }
        }
        let expired = now_us >= oldest.since_us.saturating_add(self.max_delay_us);
        if !full && !expired {
            return None;
        }
        // Remove back to front so the earlier indices stay valid.
        let mut batch: Vec<(usize, T)> = members
            .iter()
            .rev()
            .filter_map(|i| self.waiting.remove(*i))
            .map(|w| (w.rows, w.item))
            .collect();
        batch.reverse();
        Some(batch)
    }

    /// Everything still waiting, in batches, regardless of time (the
    /// worker is shutting down).
    pub fn drain(&mut self) -> Vec<Vec<(usize, T)>> {
        let mut out = Vec::new();
        while let Some(b) = self.pop_ready(u64::MAX) {
            out.push(b);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(b: Option<Vec<(usize, u32)>>) -> Vec<u32> {
        b.unwrap_or_default().into_iter().map(|(_, t)| t).collect()
    }

    #[test]
    fn a_lone_request_waits_exactly_the_delay() {
        let mut q: BatchQueue<(), u32> = BatchQueue::new(8, 2_000);
        q.push((), 1, 100, 1);
        assert_eq!(q.deadline_us(), Some(2_100));
        assert!(q.pop_ready(2_099).is_none());
        assert_eq!(items(q.pop_ready(2_100)), vec![1]);
        assert!(q.is_empty());
        assert_eq!(q.deadline_us(), None);
    }

    #[test]
    fn a_full_batch_runs_at_once_and_the_rest_keep_their_arrival_time() {
        let mut q: BatchQueue<(), u32> = BatchQueue::new(4, 2_000);
        for (i, t) in [0u64, 10, 20, 30, 40].iter().enumerate() {
            q.push((), 1, *t, i as u32);
        }
        assert_eq!(items(q.pop_ready(40)), vec![0, 1, 2, 3]);
        // The fifth has not waited long enough and is alone.
        assert!(q.pop_ready(41).is_none());
        assert_eq!(q.deadline_us(), Some(2_040));
        assert_eq!(items(q.pop_ready(2_040)), vec![4]);
    }

    #[test]
    fn rows_not_requests_fill_a_batch() {
        let mut q: BatchQueue<(), u32> = BatchQueue::new(8, 2_000);
        q.push((), 5, 0, 1);
        q.push((), 2, 1, 2);
        assert!(q.pop_ready(2).is_none(), "7 of 8 rows: still waiting");
        // 5 + 2 + 3 > 8: the third would overflow, so the first two run.
        q.push((), 3, 3, 3);
        let b = q.pop_ready(3).unwrap_or_default();
        assert_eq!(b, vec![(5, 1), (2, 2)]);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn only_requests_of_the_oldest_ones_shape_join_its_batch() {
        let mut q: BatchQueue<&str, u32> = BatchQueue::new(3, 1_000);
        q.push("a", 1, 0, 1);
        q.push("b", 1, 1, 2);
        q.push("a", 1, 2, 3);
        q.push("b", 1, 3, 4);
        q.push("a", 1, 4, 5);
        assert_eq!(items(q.pop_ready(4)), vec![1, 3, 5]);
        // The b's are now the oldest; two of three rows, so they wait.
        assert!(q.pop_ready(5).is_none());
        assert_eq!(q.deadline_us(), Some(1_001));
        assert_eq!(items(q.pop_ready(1_001)), vec![2, 4]);
    }

    #[test]
    fn an_oversized_request_runs_alone_at_once() {
        let mut q: BatchQueue<(), u32> = BatchQueue::new(4, 2_000);
        q.push((), 9, 0, 1);
        q.push((), 1, 0, 2);
        assert_eq!(items(q.pop_ready(0)), vec![1]);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn drain_empties_the_queue_shape_by_shape() {
        let mut q: BatchQueue<u8, u32> = BatchQueue::new(2, u64::MAX);
        q.push(0, 1, 0, 1);
        q.push(1, 1, 0, 2);
        q.push(0, 1, 0, 3);
        q.push(0, 1, 0, 4);
        let batches: Vec<Vec<u32>> = q
            .drain()
            .into_iter()
            .map(|b| b.into_iter().map(|(_, t)| t).collect())
            .collect();
        assert_eq!(batches, vec![vec![1, 3], vec![2], vec![4]]);
        assert!(q.is_empty());
    }
}

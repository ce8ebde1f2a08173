//! Batching of concurrent requests: the windows of requests that arrive together go through
//! one forward pass. One model thread takes jobs from a bounded queue: it waits for the first,
//! then for company until `max_batch` windows are queued or `max_wait` has passed since the
//! first arrived, sorts the windows it took by length and runs them in groups of similar
//! length (so padding stays small), and sends each job its own windows' logits.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use qa_infer::{Inferencer, Logits};
use squad_core::Feature;
use tokio::sync::oneshot;

use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchLimits {
    /// Most windows in one forward pass.
    pub max_batch: usize,
    /// Longest a window waits for others to share its forward pass.
    pub max_wait: Duration,
    /// Most windows waiting; a request that would pass it is refused (503).
    pub queue_windows: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_batch: 16,
            // Waiting costs a lone request its wait and bought no throughput where measured
            // (Zen 4, 2 threads: 1/8/32 clients as fast or faster with 0 than with 2 ms):
            // windows that queue during a forward share the next one anyway.
            max_wait: Duration::ZERO,
            queue_windows: 512,
        }
    }
}

/// A group of sorted windows ends where padding to its longest would waste more than this
/// share of the group's tokens.
const MAX_PADDING: f64 = 0.2;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchError {
    #[error("the queue is full ({0} windows waiting)")]
    Full(usize),
    #[error("the request's time budget ran out in the queue")]
    Expired,
    #[error("forward pass failed: {0}")]
    Model(String),
}

type Reply = Result<Vec<Logits>, BatchError>;

struct Job {
    windows: Vec<Feature>,
    arrived: Instant,
    deadline: Instant,
    reply: oneshot::Sender<Reply>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    windows: usize,
}

struct Shared {
    queue: Mutex<Queue>,
    arrived: Condvar,
    limits: BatchLimits,
    metrics: Arc<Metrics>,
}

#[derive(Clone)]
pub struct Batcher {
    shared: Arc<Shared>,
}

impl Batcher {
    /// Starts the model thread; it runs for the life of the process.
    pub fn start(inferencer: Arc<Inferencer>, limits: BatchLimits, metrics: Arc<Metrics>) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            arrived: Condvar::new(),
            limits,
            metrics,
        });
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("qa-serve-model".into())
            .spawn(move || loop {
                let jobs = worker.next_batch();
                run_jobs(&inferencer, jobs, &worker);
            })
            .expect("spawn the model thread");
        Batcher { shared }
    }

    /// Queues `windows`; their logits arrive on the receiver, in the same order. A job still
    /// queued at `deadline` is dropped unrun ([`BatchError::Expired`]).
    pub fn submit(
        &self,
        windows: Vec<Feature>,
        deadline: Instant,
    ) -> Result<oneshot::Receiver<Reply>, BatchError> {
        let (reply, receiver) = oneshot::channel();
        let mut q = self.shared.queue.lock().expect("queue lock");
        if q.windows + windows.len() > self.shared.limits.queue_windows && !q.jobs.is_empty() {
            return Err(BatchError::Full(q.windows));
        }
        q.windows += windows.len();
        self.shared.metrics.queue_windows.set(q.windows as i64);
        q.jobs.push_back(Job {
            windows,
            arrived: Instant::now(),
            deadline,
            reply,
        });
        self.shared.arrived.notify_one();
        Ok(receiver)
    }
}

impl Shared {
    /// Blocks for the first job, then for company (see the module doc); takes jobs in
    /// arrival order up to `max_batch` windows (always at least one job).
    fn next_batch(&self) -> Vec<Job> {
        let mut q = self.queue.lock().expect("queue lock");
        while q.jobs.is_empty() {
            q = self.arrived.wait(q).expect("queue lock");
        }
        let until = q.jobs[0].arrived + self.limits.max_wait;
        while q.windows < self.limits.max_batch {
            let now = Instant::now();
            if now >= until {
                break;
            }
            q = self
                .arrived
                .wait_timeout(q, until - now)
                .expect("queue lock")
                .0;
        }
        let mut jobs = Vec::new();
        let mut windows = 0;
        while let Some(job) = q.jobs.front() {
            if !jobs.is_empty() && windows + job.windows.len() > self.limits.max_batch {
                break;
            }
            windows += job.windows.len();
            jobs.push(q.jobs.pop_front().expect("front exists"));
        }
        q.windows -= windows;
        self.metrics.queue_windows.set(q.windows as i64);
        jobs
    }
}

/// Runs the live jobs' windows in length groups and answers every job.
fn run_jobs(inferencer: &Inferencer, jobs: Vec<Job>, shared: &Shared) {
    let now = Instant::now();
    let (live, expired): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.deadline > now);
    for job in expired {
        let _ = job.reply.send(Err(BatchError::Expired));
    }
    // (job, window) of every window, shortest first.
    let mut order: Vec<(usize, usize)> = live
        .iter()
        .enumerate()
        .flat_map(|(j, job)| (0..job.windows.len()).map(move |w| (j, w)))
        .collect();
    order.sort_by_key(|&(j, w)| live[j].windows[w].len());
    let lengths: Vec<usize> = order
        .iter()
        .map(|&(j, w)| live[j].windows[w].len())
        .collect();
    let mut logits: Vec<Vec<Option<Logits>>> =
        live.iter().map(|j| vec![None; j.windows.len()]).collect();
    let mut failure = None;
    for group in length_groups(&lengths, shared.limits.max_batch) {
        let members = &order[group];
        let windows: Vec<&Feature> = members.iter().map(|&(j, w)| &live[j].windows[w]).collect();
        shared.metrics.batch_windows.observe(windows.len() as f64);
        match inferencer.logits(&windows) {
            Ok(out) => {
                for (&(j, w), l) in members.iter().zip(out) {
                    logits[j][w] = Some(l);
                }
            }
            Err(e) => failure = Some(BatchError::Model(e.to_string())),
        }
    }
    for (job, logits) in live.into_iter().zip(logits) {
        let reply = match (&failure, logits.into_iter().collect::<Option<Vec<_>>>()) {
            (_, Some(all)) => Ok(all),
            (Some(e), None) => Err(e.clone()),
            (None, None) => unreachable!("every window of a live job is in a group"),
        };
        let _ = job.reply.send(reply);
    }
}

/// Splits ascending `lengths` into consecutive ranges of at most `max_batch` windows, each
/// wasting at most [`MAX_PADDING`] of its padded tokens.
fn length_groups(lengths: &[usize], max_batch: usize) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut tokens) = (0, 0);
    for (k, &len) in lengths.iter().enumerate() {
        let padded = (k + 1 - start) * len;
        let wasteful = (padded - tokens - len) as f64 > MAX_PADDING * padded as f64;
        if k > start && (k - start == max_batch || wasteful) {
            groups.push(start..k);
            (start, tokens) = (k, 0);
        }
        tokens += len;
    }
    if start < lengths.len() {
        groups.push(start..lengths.len());
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_capped_and_similar_in_length() {
        assert_eq!(length_groups(&[], 4), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(length_groups(&[100; 6], 4), vec![0..4, 4..6]);
        // 50 and 60 share a pass (8% padding); 200 would pad them by far more than 20%.
        assert_eq!(length_groups(&[50, 60, 200, 210], 8), vec![0..2, 2..4]);
        assert_eq!(length_groups(&[384], 1), vec![0..1]);
    }
}

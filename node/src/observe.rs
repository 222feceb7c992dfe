//! What the node tells the outside about itself: live events (the HTTP
//! API's `/api/events`), metrics, and the little memory the API keeps that
//! the chain does not (this node's audits, the results it refused, the
//! hash rate over the last hour).
//!
//! One [`Observer`] is shared by the chain task, the auditor, the miner and
//! the HTTP server. Publishing never blocks and never fails: events go to a
//! bounded broadcast channel, and a subscriber that falls behind loses the
//! oldest events (it is told how many), never slows the chain.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use protocol::api::{
    AuditEvent, AuditView, BlockSummary, HashrateSample, JobEvent, RejectionView, ReorgEvent,
    StatusView, TxEvent,
};
use protocol::JobId;
use tokio::sync::broadcast;

use crate::metrics::Metrics;

/// Events buffered for a slow `/api/events` client before it loses the
/// oldest: a few minutes of a busy devnet.
pub const EVENT_BUFFER: usize = 1024;

/// Refused results remembered per job, newest kept.
pub const REJECTIONS_PER_JOB: usize = 16;

/// Jobs with refused results remembered; the least recently refused is
/// forgotten first.
pub const REJECTION_JOBS: usize = 1024;

/// Audits remembered; the oldest finished audits are forgotten first.
pub const AUDITS_KEPT: usize = 1024;

/// Hash-rate samples kept: one hour at one per [`HASHRATE_SAMPLE_SECS`].
pub const HASHRATE_SAMPLES: usize = 720;

/// Seconds between two hash-rate samples.
pub const HASHRATE_SAMPLE_SECS: u64 = 5;

/// One live event.
#[derive(Clone, Debug)]
pub enum Event {
    /// A block joined the main chain.
    Block(BlockSummary),
    /// The main chain switched branches.
    Reorg(ReorgEvent),
    /// A transaction was offered to the mempool.
    Tx(TxEvent),
    /// A block changed a job.
    Job(JobEvent),
    /// This node's auditor moved on a result.
    Audit(AuditEvent),
    /// The node's status, every few seconds while someone listens.
    Status(Box<StatusView>),
}

impl Event {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Block(_) => "block",
            Self::Reorg(_) => "reorg",
            Self::Tx(_) => "tx",
            Self::Job(_) => "job",
            Self::Audit(_) => "audit",
            Self::Status(_) => "status",
        }
    }

    /// The SSE data: the event's JSON.
    pub fn data(&self) -> String {
        let json = match self {
            Self::Block(e) => serde_json::to_string(e),
            Self::Reorg(e) => serde_json::to_string(e),
            Self::Tx(e) => serde_json::to_string(e),
            Self::Job(e) => serde_json::to_string(e),
            Self::Audit(e) => serde_json::to_string(e),
            Self::Status(e) => serde_json::to_string(e),
        };
        json.unwrap_or_else(|err| format!("{{\"error\":\"{err}\"}}"))
    }
}

/// The shared observer.
#[derive(Debug)]
pub struct Observer {
    events: broadcast::Sender<Event>,
    /// The node's metrics.
    pub metrics: Metrics,
    audits: Mutex<BTreeMap<JobId, (u64, AuditView)>>,
    audit_seq: Mutex<u64>,
    rejections: Mutex<BTreeMap<JobId, (u64, VecDeque<RejectionView>)>>,
    hashrate: Mutex<VecDeque<HashrateSample>>,
}

impl Default for Observer {
    fn default() -> Self {
        Self::new(Metrics::unregistered())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its map whole.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Unix seconds now.
pub fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Observer {
    /// An observer recording into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Self {
            events,
            metrics,
            audits: Mutex::default(),
            audit_seq: Mutex::new(0),
            rejections: Mutex::default(),
            hashrate: Mutex::default(),
        }
    }

    /// Publishes `event` to every subscriber (none: it is dropped).
    pub fn publish(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// A new subscription to the live events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Live subscriptions.
    pub fn subscribers(&self) -> usize {
        self.events.receiver_count()
    }

    /// Records this node's audit of `job`'s pending result and publishes it.
    pub fn audit(&self, job: JobId, view: AuditView) {
        let seq = {
            let mut seq = lock(&self.audit_seq);
            *seq = seq.saturating_add(1);
            *seq
        };
        {
            let mut audits = lock(&self.audits);
            audits.insert(job, (seq, view.clone()));
            if audits.len() > AUDITS_KEPT {
                let oldest = audits.iter().min_by_key(|(_, (s, _))| *s).map(|(j, _)| *j);
                if let Some(oldest) = oldest {
                    audits.remove(&oldest);
                }
            }
        }
        self.publish(Event::Audit(AuditEvent {
            job: job.to_string(),
            audit: view,
        }));
    }

    /// This node's latest audit of `job`, if any.
    pub fn audit_of(&self, job: &JobId) -> Option<AuditView> {
        lock(&self.audits).get(job).map(|(_, view)| view.clone())
    }

    /// Remembers that this node refused a result for `job`.
    pub fn rejected(&self, job: JobId, rejection: RejectionView) {
        let mut all = lock(&self.rejections);
        let seq = all
            .values()
            .map(|(s, _)| *s)
            .max()
            .unwrap_or(0)
            .saturating_add(1);
        let entry = all.entry(job).or_insert_with(|| (seq, VecDeque::new()));
        entry.0 = seq;
        entry.1.push_back(rejection);
        while entry.1.len() > REJECTIONS_PER_JOB {
            entry.1.pop_front();
        }
        if all.len() > REJECTION_JOBS {
            let oldest = all.iter().min_by_key(|(_, (s, _))| *s).map(|(j, _)| *j);
            if let Some(oldest) = oldest {
                all.remove(&oldest);
            }
        }
    }

    /// The results this node refused for `job`, oldest first.
    pub fn rejections_of(&self, job: &JobId) -> Vec<RejectionView> {
        lock(&self.rejections)
            .get(job)
            .map(|(_, list)| list.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Adds a hash-rate sample, forgetting those older than an hour.
    pub fn sample_hashrate(&self, sample: HashrateSample) {
        let mut samples = lock(&self.hashrate);
        samples.push_back(sample);
        while samples.len() > HASHRATE_SAMPLES {
            samples.pop_front();
        }
    }

    /// The hash-rate samples, oldest first.
    pub fn hashrate_samples(&self) -> Vec<HashrateSample> {
        lock(&self.hashrate).iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(n: u64) -> RejectionView {
        RejectionView {
            tx: format!("{n}"),
            worker: "w".into(),
            reason: "r".into(),
            time: n,
        }
    }

    #[test]
    fn rejections_are_bounded_per_job_and_in_jobs() {
        let observer = Observer::default();
        let job = JobId([1; 32]);
        for n in 0..40 {
            observer.rejected(job, rejection(n));
        }
        let kept = observer.rejections_of(&job);
        assert_eq!(kept.len(), REJECTIONS_PER_JOB);
        assert_eq!(kept.first().map(|r| r.time), Some(40 - 16));
        let jobs = u32::try_from(REJECTION_JOBS).unwrap_or(u32::MAX);
        for n in 0..=jobs {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&n.to_le_bytes());
            id[31] = 9;
            observer.rejected(JobId(id), rejection(u64::from(n)));
        }
        assert!(
            observer.rejections_of(&job).is_empty(),
            "the least recently refused job is forgotten first"
        );
    }

    #[test]
    fn a_subscriber_that_left_is_not_counted() {
        let observer = Observer::default();
        let receiver = observer.subscribe();
        assert_eq!(observer.subscribers(), 1);
        drop(receiver);
        assert_eq!(observer.subscribers(), 0);
        // Publishing with nobody listening is not an error.
        observer.publish(Event::Tx(TxEvent {
            id: "x".into(),
            kind: "transfer".into(),
            accepted: true,
            reason: None,
        }));
    }
}

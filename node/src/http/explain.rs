//! A job's state in plain words: the answer to "why wasn't I paid?".
//! Built only from the job record, the tip height, this node's audit and
//! the results this node refused; it decides nothing.

use protocol::api::{AuditView, RejectionView};
use protocol::state::{ChallengeOutcome, JobRecord, JobStatus};
use protocol::Height;

fn blocks_until(height: Height, tip: Height) -> String {
    match height.0.checked_sub(tip.0) {
        Some(0) => "with the next block".to_owned(),
        Some(1) => "in 1 block".to_owned(),
        Some(n) => format!("in {n} blocks"),
        None => "now".to_owned(),
    }
}

/// The explanation of `job` at tip height `tip`.
pub fn explain(
    job: &JobRecord,
    tip: Height,
    audit: Option<&AuditView>,
    rejections: &[RejectionView],
) -> String {
    let mut parts = Vec::new();
    match &job.status {
        JobStatus::Open => {
            let proven = job
                .challenges
                .iter()
                .rev()
                .find(|c| c.outcome == ChallengeOutcome::Proven);
            if let Some(c) = proven {
                parts.push(format!(
                    "Open again: the result by {} was proven false at height {} (fraud proof on segment {} by {}); that worker's bond was slashed, half to the challenger and half burned, and it was not paid.",
                    c.worker, c.height, c.segment, c.challenger
                ));
            } else {
                parts.push("Open: no result has been accepted yet.".to_owned());
            }
            parts.push(format!(
                "The bounty of {} goes to the first result that meets the job's bar and survives a challenge window of {} blocks. The job expires at height {} ({}).",
                job.bounty,
                job.spec.challenge_window,
                job.expires_at,
                blocks_until(job.expires_at, tip)
            ));
        }
        JobStatus::Pending {
            worker,
            height,
            settles_at,
            bond,
            ..
        } => {
            parts.push(format!(
                "Pending: the result by {worker}, submitted at height {height}, is paid at height {settles_at} ({}): the bounty of {} plus its bond of {bond} back, unless a fraud proof shows it false before then.",
                blocks_until(*settles_at, tip),
                job.bounty
            ));
        }
        JobStatus::Fulfilled {
            worker,
            height,
            submitted_at,
            bond,
            ..
        } => {
            parts.push(format!(
                "Paid at height {height}: {worker} received the bounty of {} and its bond of {bond} back. Its result, submitted at height {submitted_at}, went through its challenge window with no fraud proven.",
                job.bounty
            ));
        }
        JobStatus::Expired { height } => {
            parts.push(format!(
                "Expired at height {height} with no result paid; the bounty of {} went back to the poster {}.",
                job.bounty, job.poster
            ));
        }
    }
    for c in job
        .challenges
        .iter()
        .filter(|c| c.outcome == ChallengeOutcome::Refuted)
    {
        parts.push(format!(
            "A fraud proof by {} at height {} (segment {}) was refuted: the replay agreed with the worker, and the challenger's bond was burned.",
            c.challenger, c.height, c.segment
        ));
    }
    if let Some(audit) = audit {
        let line = match audit.state.as_str() {
            "passed" => Some(format!(
                "This node audited the result: {} of {} sampled segments replayed, all agreed.",
                audit.replayed, audit.sampled
            )),
            "fraud_found" => Some(format!(
                "This node's audit found segment {} false{}.",
                audit
                    .fault_segment
                    .map_or_else(|| "?".to_owned(), |s| s.to_string()),
                audit
                    .fraud_proof
                    .as_ref()
                    .map_or_else(String::new, |tx| format!(" and sent fraud proof {tx}"))
            )),
            "auditing" => Some(format!(
                "This node is auditing the result: {} segments sampled for replay.",
                audit.sampled
            )),
            "waiting_for_data" => Some(
                "This node will audit the result once it holds the dataset and the training states."
                    .to_owned(),
            ),
            _ => None,
        };
        parts.extend(line);
    }
    if let Some(last) = rejections.last() {
        parts.push(format!(
            "This node refused {} result{} for this job; the latest, from {}: {}.",
            rejections.len(),
            if rejections.len() == 1 { "" } else { "s" },
            last.worker,
            last.reason
        ));
    }
    parts.join(" ")
}

//! The account and job state, its root, and the journal that makes every
//! change reversible.
//!
//! Every mutation goes through [`State::set_account`] or [`State::set_job`],
//! which record the entry's value before its first change in a block into a
//! [`BlockUndo`]. Undoing a block writes those values back, so a reorg
//! restores the state, and therefore the state root, exactly. Every entry is
//! also a leaf of the state tree ([`crate::tree`]), updated with the entry,
//! so the root costs the paths of what changed, not a pass over the state.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::job::{JobResult, JobSpec};
use crate::tree::{self, StateTree};
use crate::types::{Address, Amount, Height, JobId, StateRoot, TxId};

/// An account: balance and the count of transactions it has sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Spendable balance.
    pub balance: Amount,
    /// The nonce its next transaction must carry.
    pub nonce: u64,
}

/// Where coins go that are burned (half a slashed bond, a refuted
/// challenger's bond): the all-zero address. It is a small-order point,
/// which strict signature verification refuses as a key, so nobody can
/// spend from it; keeping burned coins there keeps the ledger balanced and
/// the burned total visible.
pub const BURN_ADDRESS: Address = Address::ZERO;

/// Where a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobStatus {
    /// Waiting for a result; the bounty is escrowed.
    Open,
    /// A result was admitted and is open to fraud proofs until
    /// `settles_at`; the bounty and the worker's bond are escrowed.
    Pending {
        /// Who trained it.
        worker: Address,
        /// The claimed result.
        result: JobResult,
        /// The `SubmitResult` transaction.
        tx: TxId,
        /// The height of the block that admitted it.
        height: Height,
        /// The height whose block pays it, unless a fraud proof comes first.
        settles_at: Height,
        /// The worker's escrowed bond.
        bond: Amount,
    },
    /// Settled: the bounty and the bond were paid to the worker.
    Fulfilled {
        /// Who trained it.
        worker: Address,
        /// The result.
        result: JobResult,
        /// The `SubmitResult` transaction.
        tx: TxId,
        /// The height of the block that paid the bounty.
        height: Height,
        /// The height of the block that admitted the result.
        submitted_at: Height,
        /// The bond returned with the bounty.
        bond: Amount,
    },
    /// Expired unfulfilled; the bounty went back to the poster.
    Expired {
        /// The height at which it expired.
        height: Height,
    },
}

/// A posted job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Who posted it and paid the bounty.
    pub poster: Address,
    /// The manifest.
    pub spec: JobSpec,
    /// The escrowed reward.
    pub bounty: Amount,
    /// Height of the block that posted it.
    pub posted_at: Height,
    /// First height at which it is no longer open.
    pub expires_at: Height,
    /// Where it stands.
    pub status: JobStatus,
    /// Fraud proofs against its results, in chain order. Each cost its
    /// sender a bond, so the list grows only as fast as someone pays.
    pub challenges: Vec<Challenge>,
}

/// What a fraud proof established.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChallengeOutcome {
    /// The replay confirmed the fault: the worker was slashed and the job
    /// reopened.
    Proven,
    /// The replay matched the worker's commitment: the challenger's bond
    /// was burned.
    Refuted,
}

/// A fraud proof as the job remembers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// Who sent it.
    pub challenger: Address,
    /// The worker whose result it challenged.
    pub worker: Address,
    /// The segment it opened: 0 for the initial state, `segments + 1` for
    /// the final check.
    pub segment: u32,
    /// The `FraudProof` transaction.
    pub tx: TxId,
    /// The height of its block.
    pub height: Height,
    /// What the replay found.
    pub outcome: ChallengeOutcome,
}

impl JobRecord {
    /// Whether the job still takes results.
    pub fn is_open(&self) -> bool {
        matches!(self.status, JobStatus::Open)
    }

    /// Whether a result is waiting out its challenge window.
    pub fn is_pending(&self) -> bool {
        matches!(self.status, JobStatus::Pending { .. })
    }

    /// The height at which the job settled (paid or expired), after which
    /// nothing can change it; `None` while open or pending.
    pub fn settled_at(&self) -> Option<Height> {
        match self.status {
            JobStatus::Fulfilled { height, .. } | JobStatus::Expired { height } => Some(height),
            JobStatus::Open | JobStatus::Pending { .. } => None,
        }
    }

    /// What the job holds in escrow: the bounty while open, bounty and
    /// bond while pending, nothing once settled or expired.
    pub fn escrowed(&self) -> Option<u64> {
        match self.status {
            JobStatus::Open => Some(self.bounty.0),
            JobStatus::Pending { bond, .. } => self.bounty.0.checked_add(bond.0),
            JobStatus::Fulfilled { .. } | JobStatus::Expired { .. } => Some(0),
        }
    }
}

/// The entries a block changed, each with its value before the block
/// (`None`: the entry did not exist). Undoing writes these back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockUndo {
    /// Accounts before the block, in key order.
    pub accounts: Vec<(Address, Option<Account>)>,
    /// Jobs before the block, in key order.
    pub jobs: Vec<(JobId, Option<JobRecord>)>,
}

/// Records the first prior value of each entry touched while applying a
/// block or a transaction.
#[derive(Clone, Debug, Default)]
pub struct Journal {
    accounts: BTreeMap<Address, Option<Account>>,
    jobs: BTreeMap<JobId, Option<JobRecord>>,
}

impl Journal {
    /// The recorded prior values, as undo data.
    pub fn into_undo(self) -> BlockUndo {
        BlockUndo {
            accounts: self.accounts.into_iter().collect(),
            jobs: self.jobs.into_iter().collect(),
        }
    }

    /// Whether nothing was touched.
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty() && self.jobs.is_empty()
    }
}

/// All balances, nonces and jobs.
#[derive(Clone, Debug, Default)]
pub struct State {
    accounts: BTreeMap<Address, Account>,
    jobs: BTreeMap<JobId, JobRecord>,
    /// Open jobs by expiry height, derived from `jobs`.
    expiring: BTreeSet<(Height, JobId)>,
    /// Pending jobs by settlement height, derived from `jobs`.
    settling: BTreeSet<(Height, JobId)>,
    /// Settled jobs by the height they settled at, derived from `jobs`.
    settled: BTreeSet<(Height, JobId)>,
    /// The commitment over `accounts` and `jobs`, derived from them.
    tree: StateTree,
}

impl PartialEq for State {
    fn eq(&self, other: &Self) -> bool {
        // Everything else is derived from the entries.
        self.accounts == other.accounts && self.jobs == other.jobs
    }
}

impl Eq for State {}

/// The tree key of an account.
pub fn account_key(address: &Address) -> tree::Key {
    crate::hash::sha256_parts(&[b"gradchain/state/account/", address.as_bytes()])
}

/// The tree key of a job.
pub fn job_key(id: &JobId) -> tree::Key {
    crate::hash::sha256_parts(&[b"gradchain/state/job/", id.as_bytes()])
}

/// The tree value of an account: the hash of its canonical encoding.
pub fn account_value(account: &Account) -> Result<tree::Hash, CodecError> {
    Ok(crate::hash::sha256(&codec::encode(account)?))
}

/// The tree value of a job: the hash of its canonical encoding.
pub fn job_value(job: &JobRecord) -> Result<tree::Hash, CodecError> {
    Ok(crate::hash::sha256(&codec::encode(job)?))
}

/// A proof that an account holds a value, or does not exist, under a state
/// root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountProof {
    /// The account's address.
    pub address: Address,
    /// Its entry; `None` when it has none.
    pub account: Option<Account>,
    /// The path in the state tree.
    pub proof: tree::Proof,
}

impl AccountProof {
    /// Whether the proof shows `self.account` at `self.address` under
    /// `root`, as a light client checks it against a header.
    pub fn verify(&self, root: &StateRoot) -> bool {
        let value = match &self.account {
            Some(account) => match account_value(account) {
                Ok(value) => Some(value),
                Err(_) => return false,
            },
            None => None,
        };
        self.proof
            .verify(&root.0, &account_key(&self.address), value.as_ref())
    }
}

impl State {
    /// Rebuilds a state from stored entries.
    pub fn from_entries(
        accounts: impl IntoIterator<Item = (Address, Account)>,
        jobs: impl IntoIterator<Item = (JobId, JobRecord)>,
    ) -> Self {
        let mut state = Self::default();
        for (address, account) in accounts {
            state.put_account(address, Some(account));
        }
        for (id, job) in jobs {
            state.put_job(id, Some(job));
        }
        state
    }

    /// The account at `address` (empty if never touched).
    pub fn account(&self, address: &Address) -> Account {
        self.accounts.get(address).copied().unwrap_or_default()
    }

    /// Whether `address` has an entry.
    pub fn has_account(&self, address: &Address) -> bool {
        self.accounts.contains_key(address)
    }

    /// A job by id.
    pub fn job(&self, id: &JobId) -> Option<&JobRecord> {
        self.jobs.get(id)
    }

    /// Every account, in address order.
    pub fn accounts(&self) -> impl Iterator<Item = (&Address, &Account)> {
        self.accounts.iter()
    }

    /// Every job, in id order.
    pub fn jobs(&self) -> impl Iterator<Item = (&JobId, &JobRecord)> {
        self.jobs.iter()
    }

    /// Jobs with ids after `after` (every job when `None`), in id order.
    pub fn jobs_after(&self, after: Option<&JobId>) -> impl Iterator<Item = (&JobId, &JobRecord)> {
        use std::ops::Bound;
        let start = match after {
            Some(id) => Bound::Excluded(*id),
            None => Bound::Unbounded,
        };
        self.jobs.range((start, Bound::Unbounded))
    }

    /// Open jobs whose expiry height is at most `height`, by expiry.
    pub fn jobs_expiring_by(&self, height: Height) -> Vec<JobId> {
        self.expiring
            .iter()
            .take_while(|(expires_at, _)| *expires_at <= height)
            .map(|(_, id)| *id)
            .collect()
    }

    /// Pending jobs whose settlement height is at most `height`, by height.
    pub fn jobs_settling_by(&self, height: Height) -> Vec<JobId> {
        self.settling
            .iter()
            .take_while(|(settles_at, _)| *settles_at <= height)
            .map(|(_, id)| *id)
            .collect()
    }

    /// Settled jobs whose retention of `retention` blocks after settling
    /// has run out by `height`, by settlement height.
    pub fn jobs_prunable_by(&self, height: Height, retention: u64) -> Vec<JobId> {
        self.settled
            .iter()
            .take_while(|(settled, _)| {
                settled
                    .checked_add(retention)
                    .is_some_and(|prune_at| prune_at <= height)
            })
            .map(|(_, id)| *id)
            .collect()
    }

    /// The sum of all balances (the burn address's included) and of
    /// everything jobs hold in escrow.
    pub fn total_supply(&self) -> Option<u64> {
        let balances = self
            .accounts
            .values()
            .try_fold(0u64, |sum, a| sum.checked_add(a.balance.0))?;
        self.jobs
            .values()
            .try_fold(balances, |sum, job| sum.checked_add(job.escrowed()?))
    }

    /// The state root: the root of the state tree ([`crate::tree`]) whose
    /// leaves are every account and job, keyed by [`account_key`] and
    /// [`job_key`], valued by [`account_value`] and [`job_value`]. Costs the
    /// paths of the entries changed since the last root.
    pub fn root(&self) -> Result<StateRoot, CodecError> {
        Ok(StateRoot(self.tree.root()))
    }

    /// The state root computed from every entry, caching nothing: what
    /// [`State::root`] must always equal.
    pub fn root_from_scratch(&self) -> Result<StateRoot, CodecError> {
        let mut tree = StateTree::default();
        for (address, account) in &self.accounts {
            tree.set(account_key(address), Some(account_value(account)?));
        }
        for (id, job) in &self.jobs {
            tree.set(job_key(id), Some(job_value(job)?));
        }
        Ok(StateRoot(tree.root_from_scratch()))
    }

    /// A proof of `address`'s account (or of its absence) under
    /// [`State::root`].
    pub fn account_proof(&self, address: &Address) -> AccountProof {
        AccountProof {
            address: *address,
            account: self.accounts.get(address).copied(),
            proof: self.tree.proof(&account_key(address)),
        }
    }

    pub(crate) fn credit_genesis(&mut self, address: Address, amount: Amount) {
        self.put_account(
            address,
            Some(Account {
                balance: amount,
                nonce: 0,
            }),
        );
    }

    /// Sets `address`'s account, recording its prior value in `journal`.
    pub fn set_account(&mut self, journal: &mut Journal, address: Address, account: Account) {
        let prior = self.accounts.get(&address).copied();
        journal.accounts.entry(address).or_insert(prior);
        self.put_account(address, Some(account));
    }

    fn put_account(&mut self, address: Address, account: Option<Account>) {
        // An account encodes to 16 fixed bytes: its hash cannot fail.
        let value = account.as_ref().and_then(|a| account_value(a).ok());
        self.tree.set(account_key(&address), value);
        match account {
            Some(account) => {
                self.accounts.insert(address, account);
            }
            None => {
                self.accounts.remove(&address);
            }
        }
    }

    /// Sets or removes job `id`, recording its prior value in `journal`.
    pub fn set_job(&mut self, journal: &mut Journal, id: JobId, job: Option<JobRecord>) {
        let prior = self.jobs.get(&id).cloned();
        journal.jobs.entry(id).or_insert(prior);
        self.put_job(id, job);
    }

    fn put_job(&mut self, id: JobId, job: Option<JobRecord>) {
        if let Some(old) = self.jobs.get(&id) {
            self.expiring.remove(&(old.expires_at, id));
            if let JobStatus::Pending { settles_at, .. } = old.status {
                self.settling.remove(&(settles_at, id));
            }
            if let Some(settled) = old.settled_at() {
                self.settled.remove(&(settled, id));
            }
        }
        // A job that cannot be encoded could not have been decoded or
        // built: its leaf is left out rather than the state refused.
        let value = job.as_ref().and_then(|j| job_value(j).ok());
        self.tree.set(job_key(&id), value);
        match job {
            Some(job) => {
                if job.is_open() {
                    self.expiring.insert((job.expires_at, id));
                }
                if let JobStatus::Pending { settles_at, .. } = job.status {
                    self.settling.insert((settles_at, id));
                }
                if let Some(settled) = job.settled_at() {
                    self.settled.insert((settled, id));
                }
                self.jobs.insert(id, job);
            }
            None => {
                self.jobs.remove(&id);
            }
        }
    }

    /// Writes back the prior values in `undo`.
    pub fn undo(&mut self, undo: &BlockUndo) {
        for (address, prior) in &undo.accounts {
            self.put_account(*address, *prior);
        }
        for (id, prior) in &undo.jobs {
            self.put_job(*id, prior.clone());
        }
    }

    /// The current values of the entries `undo` names, as undo data that
    /// takes the state back to now after `undo` was applied: what a caller
    /// keeps to reverse an undo that could not be committed, touching only
    /// those entries.
    pub fn redo_for(&self, undo: &BlockUndo) -> BlockUndo {
        BlockUndo {
            accounts: undo
                .accounts
                .iter()
                .map(|(address, _)| (*address, self.accounts.get(address).copied()))
                .collect(),
            jobs: undo
                .jobs
                .iter()
                .map(|(id, _)| (*id, self.jobs.get(id).cloned()))
                .collect(),
        }
    }

    /// Rolls back everything recorded in `journal`.
    pub fn rollback(&mut self, journal: Journal) {
        self.undo(&journal.into_undo());
    }
}

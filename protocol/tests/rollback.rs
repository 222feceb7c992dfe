//! Exact rollback: for random sequences of valid blocks (transfers, job
//! posts, honest and cheating results, fraud proofs that are proven or
//! refuted, settlements, reopened jobs and expiries), undoing the blocks in
//! reverse restores every earlier state and state root exactly, and coins
//! are conserved throughout: escrow and the burn address only move them.
#![allow(
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use protocol::{
    ChallengeOutcome, FraudClaim, Height, JobId, JobStatus, SegmentLeaf, SignedTx, State,
    StateRoot, TestMetric, Transaction, TxId, TxKind, BURN_ADDRESS,
};

/// How a worker's result departs from honest training.
#[derive(Clone, Copy, Debug)]
enum Cheat {
    Honest,
    /// Another worker's leaves and result.
    Copy,
    /// Honest leaves, a perfect metric.
    Inflate,
    /// Honest up to this segment, made up after it.
    Lazy(u32),
}

#[derive(Clone, Debug)]
enum Op {
    Transfer {
        from: usize,
        to: usize,
        amount: u64,
    },
    Post {
        poster: usize,
        bounty: u64,
        lifetime: u64,
    },
    Submit {
        worker: usize,
        job: usize,
        cheat: Cheat,
    },
    /// A fraud proof against the job's pending result: 0 opens the initial
    /// state, `1..=segments` a segment, anything above the final state.
    Challenge {
        challenger: usize,
        job: usize,
        segment: u32,
    },
    /// A fraud proof at the pending result's first fault, as an auditor who
    /// replayed the whole job would send; at the final state if it has none.
    Audit {
        challenger: usize,
        job: usize,
    },
}

fn arb_cheat() -> impl Strategy<Value = Cheat> {
    prop_oneof![
        2 => Just(Cheat::Honest),
        1 => Just(Cheat::Copy),
        1 => Just(Cheat::Inflate),
        2 => (0..spec().segments).prop_map(Cheat::Lazy),
    ]
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0usize..5, 0usize..6, 1u64..5_000_000_000).prop_map(|(from, to, amount)| Op::Transfer { from, to, amount }),
        2 => (0usize..5, 1u64..3_000_000_000, 1u64..10).prop_map(|(poster, bounty, lifetime)| Op::Post { poster, bounty, lifetime }),
        3 => (0usize..6, 0usize..8, arb_cheat()).prop_map(|(worker, job, cheat)| Op::Submit { worker, job, cheat }),
        2 => (0usize..6, 0usize..8, 0..spec().segments + 2).prop_map(|(challenger, job, segment)| Op::Challenge { challenger, job, segment }),
        2 => (0usize..6, 0usize..8).prop_map(|(challenger, job)| Op::Audit { challenger, job }),
    ]
}

struct Builder {
    chain: TestChain,
    keys: Vec<ed25519_dalek::SigningKey>,
    jobs: Vec<JobId>,
    /// The leaves of every result built so far, by transaction: what a
    /// challenger reads from the chain to open a pending result.
    leaves: BTreeMap<TxId, Vec<SegmentLeaf>>,
}

impl Builder {
    fn new() -> Self {
        let mut chain = TestChain::new();
        let keys: Vec<_> = std::iter::once(faucet()).chain((1..=5).map(key)).collect();
        // Fund four keys so that every sender can act.
        let funding: Vec<SignedTx> = (1..=4)
            .map(|i| {
                transfer(
                    &keys[0],
                    i as u64 - 1,
                    addr(&keys[i]),
                    20_000_000_000,
                    TRANSFER_FEE,
                )
            })
            .collect();
        chain.mine(funding).unwrap();
        Self {
            chain,
            keys,
            jobs: Vec::new(),
            leaves: BTreeMap::new(),
        }
    }

    fn nonce(&self, state: &State, who: usize, pending: &[SignedTx]) -> u64 {
        let address = addr(&self.keys[who]);
        state.account(&address).nonce
            + pending.iter().filter(|tx| tx.body.from == address).count() as u64
    }

    fn job(&self, index: usize) -> Option<JobId> {
        self.jobs.get(index % self.jobs.len().max(1)).copied()
    }

    fn tx_for(&mut self, op: &Op, pending: &[SignedTx]) -> Option<SignedTx> {
        let state = &self.chain.state;
        let height = self.chain.height().0 + 1;
        match *op {
            Op::Transfer { from, to, amount } => {
                let nonce = self.nonce(state, from, pending);
                Some(transfer(
                    &self.keys[from],
                    nonce,
                    addr(&self.keys[to % self.keys.len()]),
                    amount,
                    TRANSFER_FEE,
                ))
            }
            Op::Post {
                poster,
                bounty,
                lifetime,
            } => {
                let nonce = self.nonce(state, poster, pending);
                Some(post_job(
                    &self.keys[poster],
                    nonce,
                    bounty,
                    height + lifetime,
                ))
            }
            Op::Submit { worker, job, cheat } => {
                let job = self.job(job)?;
                let nonce = self.nonce(state, worker, pending);
                let me = addr(&self.keys[worker]);
                let (leaves, result) = match cheat {
                    Cheat::Honest => {
                        let leaves = honest_leaves(&job, &me, &spec());
                        let result = result_for(&spec(), &leaves);
                        (leaves, result)
                    }
                    Cheat::Copy => {
                        let other = addr(&self.keys[(worker + 1) % self.keys.len()]);
                        let leaves = honest_leaves(&job, &other, &spec());
                        let result = result_for(&spec(), &leaves);
                        (leaves, result)
                    }
                    Cheat::Inflate => {
                        let leaves = honest_leaves(&job, &me, &spec());
                        let mut result = result_for(&spec(), &leaves);
                        if let TestMetric::Accuracy { correct, total } = &mut result.metric {
                            *correct = *total;
                        }
                        (leaves, result)
                    }
                    Cheat::Lazy(from) => {
                        let leaves = lazy_leaves(&job, &me, &spec(), from);
                        let result = result_for(&spec(), &leaves);
                        (leaves, result)
                    }
                };
                let tx = submit_leaves(&self.keys[worker], nonce, job, result, leaves.clone());
                self.leaves.insert(tx.id().unwrap(), leaves);
                Some(tx)
            }
            Op::Challenge {
                challenger,
                job,
                segment,
            } => {
                let job = self.job(job)?;
                let JobStatus::Pending { tx, .. } = state.job(&job)?.status else {
                    return None;
                };
                let leaves = self.leaves.get(&tx)?;
                let nonce = self.nonce(state, challenger, pending);
                let claim = claim_at(leaves, segment);
                Some(fraud_proof(&self.keys[challenger], nonce, job, claim))
            }
            Op::Audit { challenger, job } => {
                let job = self.job(job)?;
                let JobStatus::Pending { tx, worker, .. } = state.job(&job)?.status else {
                    return None;
                };
                let leaves = self.leaves.get(&tx)?;
                // Honest leaves form one chain from the worker's seed: the
                // first leaf that differs from them is the first fault.
                // With none, only the final check can be wrong.
                let honest = honest_leaves(&job, &worker, &spec());
                let segment = leaves
                    .iter()
                    .zip(&honest)
                    .position(|(a, b)| a != b)
                    .map_or(spec().segments + 1, |first| first as u32);
                let nonce = self.nonce(state, challenger, pending);
                Some(fraud_proof(
                    &self.keys[challenger],
                    nonce,
                    job,
                    claim_at(leaves, segment),
                ))
            }
        }
    }

    /// Mines one block holding every op that is valid in sequence.
    fn mine(&mut self, ops: &[Op]) {
        let mut accepted: Vec<SignedTx> = Vec::new();
        for op in ops {
            let Some(tx) = self.tx_for(op, &accepted) else {
                continue;
            };
            let mut candidate = accepted.clone();
            candidate.push(tx);
            if self.chain.template(candidate.clone()).is_ok() {
                accepted = candidate;
            }
        }
        let block = self.chain.mine(accepted).unwrap();
        for tx in &block.txs {
            if let Transaction::Signed(signed) = tx {
                if matches!(signed.body.kind, TxKind::PostJob { .. }) {
                    self.jobs.push(JobId::from(signed.id().unwrap()));
                }
            }
        }
    }
}

/// The claim that opens `segment` of `leaves`: 0 the initial state,
/// `1..=segments` a segment, anything above the final state.
fn claim_at(leaves: &[SegmentLeaf], segment: u32) -> FraudClaim {
    let segments = spec().segments;
    match segment {
        0 => FraudClaim::InitialState {
            first: opened(leaves, 0),
        },
        index if index <= segments => segment_claim(leaves, index),
        _ => FraudClaim::Final {
            last: opened(leaves, segments),
        },
    }
}

fn burned(state: &State) -> u64 {
    state.account(&BURN_ADDRESS).balance.0
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn apply_then_undo_restores_state_and_root(blocks in prop::collection::vec(prop::collection::vec(arb_op(), 0..8), 1..16)) {
        let mut builder = Builder::new();
        let mut snapshots: Vec<(State, StateRoot)> = Vec::new();
        for ops in &blocks {
            let before = burned(&builder.chain.state);
            snapshots.push((builder.chain.state.clone(), builder.chain.state.root().unwrap()));
            builder.mine(ops);
            prop_assert_eq!(builder.chain.state.total_supply(), Some(minted(&builder.chain)));
            prop_assert_eq!(builder.chain.state.root().unwrap(), builder.chain.tip().header.state_root);
            prop_assert!(burned(&builder.chain.state) >= before, "burned coins came back");
            // The incremental root is the root of the entries alone: from
            // scratch, and after a restart that reloads the entries.
            let state = &builder.chain.state;
            prop_assert_eq!(state.root().unwrap(), state.root_from_scratch().unwrap());
            let reloaded = State::from_entries(
                state.accounts().map(|(a, acct)| (*a, *acct)),
                state.jobs().map(|(id, job)| (*id, job.clone())),
            );
            prop_assert_eq!(reloaded.root().unwrap(), state.root().unwrap());
        }
        while let Some((state, root)) = snapshots.pop() {
            builder.chain.disconnect();
            prop_assert_eq!(builder.chain.state.root().unwrap(), root);
            prop_assert_eq!(builder.chain.state.root_from_scratch().unwrap(), root);
            prop_assert_eq!(&builder.chain.state, &state);
        }
        prop_assert_eq!(builder.chain.height(), Height(1));
    }
}

/// The random runs above must reach the interesting paths: a fixed
/// sequence that posts, admits, refutes, slashes and reopens, settles and
/// expires, then undoes it block by block back to the start.
#[test]
fn undo_reverts_settlement_slashing_burning_reopening_and_expiry() {
    let mut builder = Builder::new();
    let mut snapshots = vec![(
        builder.chain.state.clone(),
        builder.chain.state.root().unwrap(),
    )];
    let mut mine = |builder: &mut Builder, ops: &[Op]| {
        builder.mine(ops);
        snapshots.push((
            builder.chain.state.clone(),
            builder.chain.state.root().unwrap(),
        ));
    };
    // Height 2: three jobs, the first expiring at 4.
    mine(
        &mut builder,
        &[
            Op::Post {
                poster: 1,
                bounty: 1_000,
                lifetime: 2,
            },
            Op::Post {
                poster: 2,
                bounty: 2_000,
                lifetime: 9,
            },
            Op::Post {
                poster: 1,
                bounty: 3_000,
                lifetime: 9,
            },
        ],
    );
    assert_eq!(builder.jobs.len(), 3);
    // Height 3: an honest result for job 1, a lazy one for job 2.
    mine(
        &mut builder,
        &[
            Op::Submit {
                worker: 3,
                job: 1,
                cheat: Cheat::Honest,
            },
            Op::Submit {
                worker: 4,
                job: 2,
                cheat: Cheat::Lazy(2),
            },
        ],
    );
    // Height 4: job 0 expires; a refuted proof against job 1, a proven one
    // against job 2, which reopens.
    mine(
        &mut builder,
        &[
            Op::Challenge {
                challenger: 1,
                job: 1,
                segment: 5,
            },
            Op::Challenge {
                challenger: 2,
                job: 2,
                segment: 3,
            },
        ],
    );
    // Height 5: a second worker on job 2.
    mine(
        &mut builder,
        &[Op::Submit {
            worker: 1,
            job: 2,
            cheat: Cheat::Honest,
        }],
    );
    // Heights 6 and 7: job 1 settles at 3 + window = 7.
    mine(&mut builder, &[]);
    mine(&mut builder, &[]);
    let state = &builder.chain.state;
    let job = |index: usize| state.job(&builder.jobs[index]).unwrap();
    assert!(matches!(job(0).status, JobStatus::Expired { .. }));
    assert!(matches!(job(1).status, JobStatus::Fulfilled { .. }));
    assert!(job(2).is_pending());
    assert_eq!(job(1).challenges[0].outcome, ChallengeOutcome::Refuted);
    assert_eq!(job(2).challenges[0].outcome, ChallengeOutcome::Proven);
    let bond = spec().bond.0;
    // The refuted challenger's bond, the slashed half bond (rounded up),
    // and the entry charges of four funded accounts and three jobs.
    let charges = 7 * builder.chain.params.entry_charge.0;
    assert_eq!(
        burned(state),
        builder.chain.params.fraud_proof_bond.0 + bond - bond / 2 + charges
    );
    assert_eq!(state.total_supply(), Some(minted(&builder.chain)));
    snapshots.pop();
    while let Some((state, root)) = snapshots.pop() {
        builder.chain.disconnect();
        assert_eq!(builder.chain.state, state);
        assert_eq!(builder.chain.state.root().unwrap(), root);
    }
    assert_eq!(builder.chain.height(), Height(1));
}

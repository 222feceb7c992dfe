//! Exact rollback: for random sequences of valid blocks (transfers, job
//! posts, results, expiries), undoing the blocks in reverse restores every
//! earlier state and state root exactly, and coins are conserved throughout.
#![allow(
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use proptest::prelude::*;
use protocol::{Height, JobId, SignedTx, State, StateRoot, Transaction};

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
        forged: bool,
    },
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..5, 0usize..6, 1u64..5_000_000_000).prop_map(|(from, to, amount)| Op::Transfer { from, to, amount }),
        2 => (0usize..5, 1u64..3_000_000_000, 1u64..6).prop_map(|(poster, bounty, lifetime)| Op::Post { poster, bounty, lifetime }),
        2 => (0usize..6, 0usize..8, any::<bool>()).prop_map(|(worker, job, forged)| Op::Submit { worker, job, forged }),
    ]
}

struct Builder {
    chain: TestChain,
    keys: Vec<ed25519_dalek::SigningKey>,
    jobs: Vec<JobId>,
}

impl Builder {
    fn new() -> Self {
        let mut chain = TestChain::new();
        let keys: Vec<_> = std::iter::once(faucet()).chain((1..=5).map(key)).collect();
        // Fund four keys so that every sender can act.
        let funding: Vec<SignedTx> = (1..=4)
            .map(|i| transfer(&keys[0], i as u64 - 1, addr(&keys[i]), 20_000_000_000, 1))
            .collect();
        chain.mine(funding).unwrap();
        Self {
            chain,
            keys,
            jobs: Vec::new(),
        }
    }

    fn nonce(&self, state: &State, who: usize, pending: &[SignedTx]) -> u64 {
        let address = addr(&self.keys[who]);
        state.account(&address).nonce
            + pending.iter().filter(|tx| tx.body.from == address).count() as u64
    }

    fn tx_for(&self, op: &Op, pending: &[SignedTx]) -> Option<SignedTx> {
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
                    3,
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
            Op::Submit {
                worker,
                job,
                forged,
            } => {
                let job = *self.jobs.get(job % self.jobs.len().max(1))?;
                let nonce = self.nonce(state, worker, pending);
                let mut result = honest_result(&job, &addr(&self.keys[worker]), &spec());
                if forged {
                    result.weights.0[31] ^= 1;
                }
                Some(submit(&self.keys[worker], nonce, job, result))
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
                if matches!(signed.body.kind, protocol::TxKind::PostJob { .. }) {
                    self.jobs.push(JobId::from(signed.id().unwrap()));
                }
            }
        }
    }
}

/// Coins created so far: the premine plus what each coinbase paid beyond
/// the fees it collected.
fn minted(chain: &TestChain) -> u64 {
    let mut total = chain.params.faucet_premine.0;
    for block in chain.blocks.iter().skip(1) {
        for tx in &block.txs {
            match tx {
                Transaction::Coinbase(cb) => total += cb.amount.0,
                Transaction::Signed(signed) => total -= signed.body.fee.0,
            }
        }
    }
    total
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn apply_then_undo_restores_state_and_root(blocks in prop::collection::vec(prop::collection::vec(arb_op(), 0..6), 1..10)) {
        let mut builder = Builder::new();
        let mut snapshots: Vec<(State, StateRoot)> = Vec::new();
        for ops in &blocks {
            snapshots.push((builder.chain.state.clone(), builder.chain.state.root().unwrap()));
            builder.mine(ops);
            prop_assert_eq!(builder.chain.state.total_supply(), Some(minted(&builder.chain)));
            prop_assert_eq!(builder.chain.state.root().unwrap(), builder.chain.tip().header.state_root);
        }
        while let Some((state, root)) = snapshots.pop() {
            builder.chain.disconnect();
            prop_assert_eq!(builder.chain.state.root().unwrap(), root);
            prop_assert_eq!(&builder.chain.state, &state);
        }
        prop_assert_eq!(builder.chain.height(), Height(1));
    }
}

/// The random runs above must reach the interesting paths: a fixed
/// sequence that posts, pays, expires and then undoes everything.
#[test]
fn undo_reverts_payment_and_expiry() {
    let mut builder = Builder::new();
    let start = (
        builder.chain.state.clone(),
        builder.chain.state.root().unwrap(),
    );
    builder.mine(&[
        Op::Post {
            poster: 1,
            bounty: 1_000,
            lifetime: 2,
        },
        Op::Post {
            poster: 2,
            bounty: 2_000,
            lifetime: 5,
        },
    ]);
    assert_eq!(builder.jobs.len(), 2);
    builder.mine(&[Op::Submit {
        worker: 3,
        job: 1,
        forged: false,
    }]);
    builder.mine(&[]); // job 0 expires at this height
    let fulfilled = builder.chain.state.job(&builder.jobs[1]).unwrap().status;
    assert!(matches!(fulfilled, protocol::JobStatus::Fulfilled { .. }));
    let expired = builder.chain.state.job(&builder.jobs[0]).unwrap().status;
    assert!(matches!(expired, protocol::JobStatus::Expired { .. }));
    for _ in 0..3 {
        builder.chain.disconnect();
    }
    assert_eq!(builder.chain.state, start.0);
    assert_eq!(builder.chain.state.root().unwrap(), start.1);
}

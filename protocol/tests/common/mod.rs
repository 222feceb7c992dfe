//! Shared fixtures for the protocol tests: keys, a deterministic fake
//! training verifier, and a chain builder that mines real regtest blocks
//! through the public validation functions.
#![allow(dead_code)]

use ed25519_dalek::SigningKey;
use protocol::job::{worker_seed, ENGINE_VERSION};
use protocol::params::faucet_key;
use protocol::state::BlockUndo;
use protocol::validation::{
    self, apply_block, check_header, expected_bits, median_time_past, template_state_root,
    BlockError, HeaderContext,
};
use protocol::{
    Acceptance, Activation, Address, Amount, Block, ChainParams, Coinbase, DatasetRef, Digest,
    F32Bits, Header, Height, JobId, JobResult, JobSpec, Loss, ModelSpec, Optimizer, SignedTx,
    Split, State, Task, TestMetric, TrainingVerifier, Transaction, TxBody, TxKind, VerifyError,
};

pub fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

pub fn addr(key: &SigningKey) -> Address {
    Address::from_verifying_key(&key.verifying_key())
}

pub fn faucet() -> SigningKey {
    faucet_key()
}

pub fn spec() -> JobSpec {
    JobSpec {
        dataset: DatasetRef {
            digest: Digest([7; 32]),
            rows: 150,
            features: 4,
        },
        task: Task::Classification { classes: 3 },
        split: Split {
            validation_permille: 100,
            test_permille: 200,
        },
        model: ModelSpec {
            hidden: vec![16],
            activation: Activation::Relu,
        },
        loss: Loss::CrossEntropy,
        optimizer: Optimizer::Adam {
            lr: F32Bits::from_f32(0.01),
            beta1: F32Bits::from_f32(0.9),
            beta2: F32Bits::from_f32(0.999),
            eps: F32Bits::from_f32(1e-8),
        },
        l1: F32Bits::from_f32(0.0),
        l2: F32Bits::from_f32(0.0),
        batch_size: 16,
        epochs: 20,
        base_seed: 42,
        checkpoint_interval: 10,
        engine_version: ENGINE_VERSION,
        acceptance: Acceptance::MinAccuracy { ppm: 900_000 },
    }
}

/// The result an honest worker gets, as far as [`FakeVerifier`] is
/// concerned: a function of the worker seed, 29 of 30 test rows right.
pub fn honest_result(job: &JobId, worker: &Address, spec: &JobSpec) -> JobResult {
    let seed = worker_seed(job, worker, spec.base_seed);
    let test = spec.split.sizes(spec.dataset.rows).unwrap().test;
    JobResult {
        weights: Digest(protocol::sha256(&seed.to_le_bytes())),
        checkpoints: Digest(protocol::sha256(&seed.wrapping_add(1).to_le_bytes())),
        train_loss: F32Bits::from_f32(0.25),
        metric: TestMetric::Accuracy {
            correct: test - 1,
            total: test,
        },
    }
}

/// Replays by recomputing [`honest_result`] and comparing.
pub struct FakeVerifier;

impl TrainingVerifier for FakeVerifier {
    fn verify(
        &self,
        job: &JobId,
        spec: &JobSpec,
        worker: &Address,
        claimed: &JobResult,
    ) -> Result<(), VerifyError> {
        let expected = honest_result(job, worker, spec);
        if expected.weights != claimed.weights {
            return Err(VerifyError::WeightsMismatch {
                expected: expected.weights,
                got: claimed.weights,
            });
        }
        if expected.metric != claimed.metric || expected.train_loss != claimed.train_loss {
            return Err(VerifyError::MetricMismatch {
                expected: expected.metric,
                got: claimed.metric,
                expected_loss: expected.train_loss,
                got_loss: claimed.train_loss,
            });
        }
        Ok(())
    }
}

pub fn transfer(from: &SigningKey, nonce: u64, to: Address, amount: u64, fee: u64) -> SignedTx {
    TxBody {
        from: Address::ZERO,
        nonce,
        fee: Amount(fee),
        kind: TxKind::Transfer {
            to,
            amount: Amount(amount),
        },
    }
    .sign(from, ChainParams::regtest().chain_id)
    .unwrap()
}

pub fn post_job(from: &SigningKey, nonce: u64, bounty: u64, expires_at: u64) -> SignedTx {
    TxBody {
        from: Address::ZERO,
        nonce,
        fee: Amount(10),
        kind: TxKind::PostJob {
            spec: spec(),
            bounty: Amount(bounty),
            expires_at: Height(expires_at),
        },
    }
    .sign(from, ChainParams::regtest().chain_id)
    .unwrap()
}

pub fn submit(from: &SigningKey, nonce: u64, job: JobId, result: JobResult) -> SignedTx {
    TxBody {
        from: Address::ZERO,
        nonce,
        fee: Amount(5),
        kind: TxKind::SubmitResult { job, result },
    }
    .sign(from, ChainParams::regtest().chain_id)
    .unwrap()
}

/// A regtest chain kept in memory, mined and validated through the public
/// rule functions.
pub struct TestChain {
    pub params: ChainParams,
    pub state: State,
    pub blocks: Vec<Block>,
    pub undos: Vec<BlockUndo>,
    pub miner: Address,
}

impl TestChain {
    pub fn new() -> Self {
        Self::with_params(ChainParams::regtest())
    }

    pub fn with_params(params: ChainParams) -> Self {
        let genesis = params.genesis_block().unwrap();
        Self {
            state: params.genesis_state(),
            blocks: vec![genesis],
            undos: Vec::new(),
            miner: addr(&key(200)),
            params,
        }
    }

    pub fn height(&self) -> Height {
        Height(self.blocks.len() as u64 - 1)
    }

    pub fn tip(&self) -> &Block {
        self.blocks.last().unwrap()
    }

    pub fn context(&self, now: u32) -> HeaderContext {
        let tip = self.tip();
        let times: Vec<u32> = self.blocks.iter().map(|b| b.header.time).collect();
        HeaderContext {
            parent: tip.hash(),
            expected_bits: self.expected_bits(),
            median_time_past: median_time_past(&times),
            now,
        }
    }

    pub fn expected_bits(&self) -> protocol::CompactTarget {
        let block1 = self.blocks.get(1).map(|b| b.header.time);
        expected_bits(&self.params, self.height(), self.tip().header.time, block1).unwrap()
    }

    /// An unmined template on the tip: coinbase paying subsidy plus fees,
    /// the given transactions, correct roots, time tip + 10.
    pub fn template(&mut self, txs: Vec<SignedTx>) -> Result<Block, BlockError> {
        let height = self.height().next().unwrap();
        let fees = txs.iter().map(|tx| tx.body.fee.0).sum::<u64>();
        let coinbase = Transaction::Coinbase(Coinbase {
            height,
            miner: self.miner,
            amount: Amount(self.params.subsidy(height).0 + fees),
        });
        let mut all = vec![coinbase];
        all.extend(txs.into_iter().map(Transaction::Signed));
        let state_root =
            template_state_root(&mut self.state, &all, height, &self.params, &FakeVerifier)?;
        let ids: Vec<_> = all.iter().map(|tx| tx.id().unwrap()).collect();
        let header = Header {
            version: self.params.block_version,
            prev: self.tip().hash(),
            merkle_root: protocol::merkle_root(&ids),
            state_root,
            time: self.tip().header.time + 10,
            bits: self.expected_bits(),
            nonce: 0,
        };
        Ok(Block { header, txs: all })
    }

    /// Scans nonces until the header meets its target.
    pub fn solve(block: &mut Block) {
        let target = block.header.bits.to_target().unwrap();
        let mut hasher = block.header.hasher();
        for nonce in 0.. {
            if target.is_met_by(&protocol::BlockHash(hasher.hash_with_nonce(nonce))) {
                block.header.nonce = nonce;
                return;
            }
        }
    }

    /// Validates `block` as the next block and connects it.
    pub fn connect(&mut self, block: Block) -> Result<(), BlockError> {
        let now = block.header.time;
        check_header(&block.sealed_header(), &self.context(now), &self.params)?;
        let height = self.height().next().unwrap();
        let undo = apply_block(&mut self.state, &block, height, &self.params, &FakeVerifier)?;
        self.blocks.push(block);
        self.undos.push(undo);
        Ok(())
    }

    /// Builds, mines and connects a block with `txs`.
    pub fn mine(&mut self, txs: Vec<SignedTx>) -> Result<Block, BlockError> {
        let mut block = self.template(txs)?;
        Self::solve(&mut block);
        self.connect(block.clone())?;
        Ok(block)
    }

    /// Disconnects the tip.
    pub fn disconnect(&mut self) {
        let undo = self.undos.pop().unwrap();
        validation::undo_block(&mut self.state, &undo);
        self.blocks.pop();
    }
}

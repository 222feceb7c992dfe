//! Shared fixtures for the protocol tests: keys, a deterministic fake
//! training engine behind the real [`SegmentVerifier`] interface, and a
//! chain builder that mines real regtest blocks through the public
//! validation functions.
//!
//! The fake engine's "state" is a digest: `S_0 = H(s0 ‖ seed)`,
//! `S_j = H(seg ‖ j ‖ S_{j-1})`, each segment's loss `1/j`, and the final
//! weights `H(w ‖ S_n)`. Like real training, any state continues
//! deterministically, so every comparison a fraud proof needs is made by the
//! consensus rules themselves, never here.
#![allow(dead_code)]

use ed25519_dalek::SigningKey;
use protocol::job::{worker_seed, ENGINE_VERSION};
use protocol::params::faucet_key;
use protocol::segments::{merkle_path, segments_root};
use protocol::state::BlockUndo;
use protocol::validation::{
    self, apply_block, check_header, expected_bits, median_time_past, template_state_root,
    BlockError, HeaderContext,
};
use protocol::{
    Acceptance, Activation, Address, Amount, Block, ChainParams, Coinbase, DatasetRef, Digest,
    F32Bits, FinalOutcome, FraudClaim, Header, Height, JobId, JobResult, JobSpec, Judged, Loss,
    ModelSpec, OpenedLeaf, Optimizer, SegmentLeaf, SegmentVerifier, SignedTx, Split, State, Task,
    TestMetric, Transaction, TxBody, TxKind, VerifyError,
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
        segments: 8,
        engine_version: ENGINE_VERSION,
        acceptance: Acceptance::MinAccuracy { ppm: 900_000 },
        bond: Amount(ChainParams::regtest().job_limits.min_bond.0 * 3),
        challenge_window: 4,
    }
}

fn fake_initial(seed: u64) -> Digest {
    Digest(protocol::sha256(
        &[b"s0".as_slice(), &seed.to_le_bytes()].concat(),
    ))
}

fn fake_segment(index: u32, prev: &Digest) -> SegmentLeaf {
    SegmentLeaf {
        state: Digest(protocol::sha256(
            &[b"seg".as_slice(), &index.to_le_bytes(), prev.as_bytes()].concat(),
        )),
        loss: F32Bits::from_f32(1.0 / index as f32),
    }
}

fn fake_final(spec: &JobSpec, last: &Digest) -> FinalOutcome {
    let test = spec.split.sizes(spec.dataset.rows).unwrap().test;
    FinalOutcome {
        weights: Digest(protocol::sha256(
            &[b"w".as_slice(), last.as_bytes()].concat(),
        )),
        train_loss: F32Bits::from_f32(0.25),
        metric: TestMetric::Accuracy {
            correct: test - 1,
            total: test,
        },
    }
}

/// The leaves `0..=segments` an honest worker commits to.
pub fn honest_leaves(job: &JobId, worker: &Address, spec: &JobSpec) -> Vec<SegmentLeaf> {
    let seed = worker_seed(job, worker, spec.base_seed);
    let mut leaves = vec![SegmentLeaf {
        state: fake_initial(seed),
        loss: F32Bits::from_f32(0.0),
    }];
    for index in 1..=spec.segments {
        let prev = leaves.last().unwrap().state;
        leaves.push(fake_segment(index, &prev));
    }
    leaves
}

/// The result an honest worker gets: its leaves' root and what follows from
/// the last state, 29 of 30 test rows right.
pub fn honest_result(job: &JobId, worker: &Address, spec: &JobSpec) -> JobResult {
    result_for(spec, &honest_leaves(job, worker, spec))
}

/// The result that follows from `leaves`, honest or not.
pub fn result_for(spec: &JobSpec, leaves: &[SegmentLeaf]) -> JobResult {
    let last = fake_final(spec, &leaves.last().unwrap().state);
    JobResult {
        weights: last.weights,
        segments_root: segments_root(leaves),
        train_loss: last.train_loss,
        metric: last.metric,
    }
}

/// Leaves of a lazy worker: honest up to segment `from`, made up after it.
pub fn lazy_leaves(job: &JobId, worker: &Address, spec: &JobSpec, from: u32) -> Vec<SegmentLeaf> {
    let mut leaves = honest_leaves(job, worker, spec);
    for (index, leaf) in leaves.iter_mut().enumerate().skip(from as usize + 1) {
        leaf.state = Digest([index as u8; 32]);
    }
    leaves
}

/// Leaf `index` of `leaves` with its path.
pub fn opened(leaves: &[SegmentLeaf], index: u32) -> OpenedLeaf {
    OpenedLeaf {
        leaf: leaves[index as usize],
        path: merkle_path(leaves, index).unwrap(),
    }
}

/// The claim that segment `index` of `leaves` does not follow.
pub fn segment_claim(leaves: &[SegmentLeaf], index: u32) -> FraudClaim {
    FraudClaim::Segment {
        index,
        prev: opened(leaves, index - 1),
        leaf: opened(leaves, index),
    }
}

/// Replays with the fake engine, counting replays. `missing` makes every
/// question about that state digest answer "not held here".
#[derive(Default)]
pub struct FakeVerifier {
    pub missing: Option<Digest>,
    pub replays: std::cell::Cell<u32>,
}

impl FakeVerifier {
    fn held(&self, digest: &Digest) -> Result<(), VerifyError> {
        self.replays.set(self.replays.get() + 1);
        match self.missing {
            Some(missing) if missing == *digest => Err(VerifyError::DataUnavailable(missing)),
            _ => Ok(()),
        }
    }
}

impl SegmentVerifier for FakeVerifier {
    fn initial_state(
        &self,
        job: &JobId,
        spec: &JobSpec,
        worker: &Address,
    ) -> Result<Judged<Digest>, VerifyError> {
        self.held(&spec.dataset.digest)?;
        Ok(Judged::Computed(fake_initial(worker_seed(
            job,
            worker,
            spec.base_seed,
        ))))
    }

    fn replay_segment(
        &self,
        _: &JobId,
        spec: &JobSpec,
        _: &Address,
        index: u32,
        prev_state: &Digest,
    ) -> Result<Judged<SegmentLeaf>, VerifyError> {
        self.held(prev_state)?;
        self.held(&spec.dataset.digest)?;
        Ok(Judged::Computed(fake_segment(index, prev_state)))
    }

    fn final_result(
        &self,
        _: &JobId,
        spec: &JobSpec,
        _: &Address,
        final_state: &Digest,
    ) -> Result<Judged<FinalOutcome>, VerifyError> {
        self.held(final_state)?;
        Ok(Judged::Computed(fake_final(spec, final_state)))
    }
}

/// The fee of every `submit`, `submit_leaves` and `fraud_proof`: over the
/// regtest minimum (1 a byte) for the largest of them in these tests.
pub const JOB_TX_FEE: u64 = 5_000;

/// A fee over the regtest minimum for a transfer (about 156 bytes).
pub const TRANSFER_FEE: u64 = 200;

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
    post_job_with(from, nonce, spec(), bounty, expires_at)
}

/// `tx` re-signed by `key` paying exactly `fee`, for tests that pin bytes.
pub fn paying(tx: SignedTx, key: &SigningKey, fee: u64) -> SignedTx {
    let mut body = tx.body;
    body.fee = Amount(fee);
    body.sign(key, ChainParams::regtest().chain_id).unwrap()
}

/// A `PostJob` for `spec`, which need not be valid.
pub fn post_job_with(
    from: &SigningKey,
    nonce: u64,
    spec: JobSpec,
    bounty: u64,
    expires_at: u64,
) -> SignedTx {
    let mut body = TxBody {
        from: Address::ZERO,
        nonce,
        fee: Amount::ZERO,
        kind: TxKind::PostJob {
            spec,
            bounty: Amount(bounty),
            expires_at: Height(expires_at),
        },
    };
    // The least fee for its size: tests that price jobs read it back.
    body.fee = body
        .min_fee_at(ChainParams::regtest().min_fee_rate)
        .unwrap()
        .unwrap();
    body.sign(from, ChainParams::regtest().chain_id).unwrap()
}

/// An honest worker's `SubmitResult`.
pub fn submit(from: &SigningKey, nonce: u64, job: JobId) -> SignedTx {
    let leaves = honest_leaves(&job, &addr(from), &spec());
    submit_leaves(from, nonce, job, result_for(&spec(), &leaves), leaves)
}

/// A `SubmitResult` with the given result and leaves.
pub fn submit_leaves(
    from: &SigningKey,
    nonce: u64,
    job: JobId,
    result: JobResult,
    leaves: Vec<SegmentLeaf>,
) -> SignedTx {
    TxBody {
        from: Address::ZERO,
        nonce,
        fee: Amount(JOB_TX_FEE),
        kind: TxKind::SubmitResult {
            job,
            result,
            leaves,
        },
    }
    .sign(from, ChainParams::regtest().chain_id)
    .unwrap()
}

/// A fraud proof against `job`.
pub fn fraud_proof(from: &SigningKey, nonce: u64, job: JobId, claim: FraudClaim) -> SignedTx {
    TxBody {
        from: Address::ZERO,
        nonce,
        fee: Amount(JOB_TX_FEE),
        kind: TxKind::FraudProof { job, claim },
    }
    .sign(from, ChainParams::regtest().chain_id)
    .unwrap()
}

/// Coins created on `chain` so far: the premine plus what each coinbase
/// paid beyond the fees it collected. Escrow and burning move coins, never
/// make or destroy them, so [`State::total_supply`] must equal this.
pub fn minted(chain: &TestChain) -> u64 {
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

/// A regtest chain kept in memory, mined and validated through the public
/// rule functions.
pub struct TestChain {
    pub params: ChainParams,
    pub state: State,
    pub blocks: Vec<Block>,
    pub undos: Vec<BlockUndo>,
    pub miner: Address,
    pub verifier: FakeVerifier,
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
            verifier: FakeVerifier::default(),
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
            template_state_root(&mut self.state, &all, height, &self.params, &self.verifier)?;
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
        // A node checks a block's body once and applies the checked block
        // (transaction ids carried along): that path must agree exactly
        // with the plain one, in result and in state, on every block.
        let mut checked_state = self.state.clone();
        let checked = validation::CheckedBlock::check(block.clone(), height, &self.params)
            .and_then(|checked| {
                validation::apply_checked_block(
                    &mut checked_state,
                    &checked,
                    &self.params,
                    &self.verifier,
                    validation::Presigned::Nothing,
                )
            });
        let plain = apply_block(
            &mut self.state,
            &block,
            height,
            &self.params,
            &self.verifier,
        );
        assert_eq!(checked, plain, "checked and plain application differ");
        assert_eq!(checked_state, self.state, "checked and plain states differ");
        let undo = plain?;
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

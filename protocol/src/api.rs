//! The node's HTTP API as values: the JSON bodies that the node's HTTP
//! server (node/src/http) answers and that the one client both CLIs use
//! (trainer/src/client.rs) reads. Hashes, ids and addresses are lowercase
//! hex strings; amounts, heights and counts are JSON numbers; cumulative
//! work, which can exceed 2^53, is a decimal string.
//!
//! Typed clients that need a chain value bit for bit (a job's spec to train
//! it, a block to check it) ask for the `/raw` form of a route instead,
//! which answers the canonical codec bytes ([`crate::codec`]), as Esplora's
//! `/tx/:txid/raw` does. This module only defines values and turns chain
//! values into them; it never opens a socket.

use serde::{Deserialize, Serialize};

use crate::block::Block;
use crate::state::{Account, AccountProof, ChallengeOutcome, JobRecord, JobStatus};
use crate::tree;
use crate::tx::{FraudClaim, Transaction, TxKind};
use crate::types::{Address, BlockHash, Height, JobId, StateRoot};
use crate::TestMetric;

/// Most input rows in one `POST /api/jobs/{id}/predict`.
pub const MAX_PREDICT_ROWS: usize = 1024;

/// How a block is named in a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockRef {
    /// The main-chain block at this height.
    Height(Height),
    /// The block with this hash, on any branch the node stores.
    Hash(BlockHash),
}

/// A block with where it sits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockInfo {
    /// Its height.
    pub height: Height,
    /// Its hash.
    pub hash: BlockHash,
    /// Whether it is on the node's main chain.
    pub main_chain: bool,
    /// The block itself.
    pub block: Block,
}

/// An account as the node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceInfo {
    /// The address asked about.
    pub address: Address,
    /// Balance and nonce at the tip.
    pub account: Account,
    /// The nonce the next new transaction from this address should carry,
    /// counting the address's transactions waiting in the mempool.
    pub next_nonce: u64,
}

/// The default address of a node's HTTP API; clients default to
/// `http://127.0.0.1:9701`.
pub const DEFAULT_HTTP_PORT: u16 = 9701;

/// Block summaries in one `/api/blocks` page.
pub const BLOCKS_PAGE: u64 = 10;

/// Jobs in one `/api/jobs` page unless `limit` asks for fewer.
pub const JOBS_PAGE: usize = 50;

/// The most jobs one `/api/jobs` page holds, whatever `limit` asks.
pub const MAX_JOBS_PAGE: usize = 200;

/// The most transaction ids `/api/mempool` lists.
pub const MAX_MEMPOOL_LISTED: usize = 1000;

/// The largest JSON or hex body of `POST /api/tx` and
/// `POST /api/jobs/{id}/predict`: 4 MiB.
pub const MAX_JSON_BODY_BYTES: usize = 4 * 1024 * 1024;

/// A stable, machine-readable reason for an error answer; the HTTP status
/// goes with it (see [`ErrorCode::status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A malformed path, query or body; the message names the field.
    BadRequest,
    /// A write route without the bearer token it requires.
    Unauthorized,
    /// No such block, transaction, job, address route or blob.
    NotFound,
    /// The transaction was refused by validation or the mempool.
    TxRejected,
    /// A body over the route's size limit.
    TooLarge,
    /// Over a per-client quota; retrying later may succeed.
    QuotaExceeded,
    /// The node failed internally.
    Internal,
    /// The node is not synced (or is shutting down) and cannot answer.
    NotSynced,
}

impl ErrorCode {
    /// The HTTP status this code is answered with.
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest | Self::TxRejected => 400,
            Self::Unauthorized => 401,
            Self::NotFound => 404,
            Self::TooLarge => 413,
            Self::QuotaExceeded => 429,
            Self::Internal => 500,
            Self::NotSynced => 503,
        }
    }
}

/// The body of every error answer: `{"error": {"code", "message"}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ApiError,
}

/// One error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Why, as a stable code.
    pub code: ErrorCode,
    /// What was wrong, naming the value and what was expected.
    pub message: String,
}

/// `GET /api/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    /// The chain preset name, such as `devnet`.
    pub chain: String,
    /// The chain id transactions sign over.
    pub chain_id: u32,
    /// Height of the tip.
    pub height: u64,
    /// Hash of the tip.
    pub tip: String,
    /// Cumulative work of the main chain, in decimal.
    pub total_work: String,
    /// State root at the tip.
    pub state_root: String,
    /// Connected peers.
    pub peers: u32,
    /// Transactions in the mempool.
    pub mempool: u32,
    /// Encoded bytes of the mempool's transactions.
    pub mempool_bytes: u64,
    /// The least fee a transaction may pay per encoded byte.
    pub min_fee_rate: u64,
    /// What a transaction creating a live-state entry (a new account or a
    /// job) burns on top of its fee.
    pub entry_charge: u64,
    /// Whether the node is mining.
    pub mining: bool,
    /// Hashes per second over the last measurement window; 0 when idle.
    pub hashrate: u64,
    /// The node's libp2p peer id.
    pub peer_id: String,
    /// Whether the tip is recent: false when it is more than a day old
    /// (Bitcoin Core's max tip age), as while catching up.
    pub synced: bool,
    /// The network's hash rate, estimated from the work and times of the
    /// last 20 blocks.
    pub network_hashrate: f64,
}

/// One block in `/api/blocks`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSummary {
    /// Its height.
    pub height: u64,
    /// Its hash.
    pub hash: String,
    /// Header time, Unix seconds.
    pub time: u64,
    /// Transactions, the coinbase included.
    pub txs: u32,
    /// Encoded size in bytes.
    pub bytes: u64,
    /// The address the coinbase pays.
    pub miner: String,
}

/// `GET /api/blocks[?from=H]`: up to [`BLOCKS_PAGE`] main-chain blocks,
/// newest first, starting at height `from` (default: the tip).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlocksPage {
    /// The blocks, newest first.
    pub blocks: Vec<BlockSummary>,
    /// The `from` of the next (older) page; absent at genesis.
    pub next: Option<u64>,
}

/// `GET /api/block/{hash|height}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockView {
    /// Its height.
    pub height: u64,
    /// Its hash.
    pub hash: String,
    /// Whether it is on the node's main chain.
    pub main_chain: bool,
    /// The parent's hash.
    pub prev: String,
    /// Merkle root of the transaction ids.
    pub merkle_root: String,
    /// State root after the block.
    pub state_root: String,
    /// Header time, Unix seconds.
    pub time: u64,
    /// Compact target.
    pub bits: u32,
    /// Proof-of-work nonce.
    pub nonce: u64,
    /// Encoded size in bytes.
    pub bytes: u64,
    /// Its transactions, the coinbase first.
    pub txs: Vec<TxView>,
}

impl BlockView {
    /// The view of `block` at `height`.
    pub fn new(block: &Block, height: u64, main_chain: bool, bytes: u64) -> Self {
        let h = &block.header;
        Self {
            height,
            hash: block.hash().to_string(),
            main_chain,
            prev: h.prev.to_string(),
            merkle_root: h.merkle_root.to_string(),
            state_root: h.state_root.to_string(),
            time: u64::from(h.time),
            bits: h.bits.0,
            nonce: h.nonce,
            bytes,
            txs: block.txs.iter().map(TxView::new).collect(),
        }
    }
}

/// One transaction. Which optional fields are present depends on `kind`:
/// `coinbase` (to, amount), `transfer` (to, amount), `post_job` (job,
/// bounty, expires_at), `submit_result` (job, segments_root, loss_curve),
/// `fraud_proof` (job, claim).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TxView {
    /// Transaction id.
    pub id: String,
    /// `coinbase`, `transfer`, `post_job`, `submit_result` or `fraud_proof`.
    pub kind: String,
    /// The signer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The signer's nonce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<u64>,
    /// The fee, base units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fee: Option<u64>,
    /// The recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Base units moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<u64>,
    /// The job posted, answered or challenged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// A posted job's bounty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounty: Option<u64>,
    /// A posted job's expiry height.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// A result's segments root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments_root: Option<String>,
    /// A result's committed training loss after each segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_curve: Option<Vec<f64>>,
    /// A fraud proof's claim: `initial_state`, `segment N` or `final`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
}

impl TxView {
    /// The view of `tx`.
    pub fn new(tx: &Transaction) -> Self {
        let id = tx.id().map(|i| i.to_string()).unwrap_or_default();
        match tx {
            Transaction::Coinbase(cb) => Self {
                id,
                kind: "coinbase".into(),
                to: Some(cb.miner.to_string()),
                amount: Some(cb.amount.0),
                ..Self::default()
            },
            Transaction::Signed(signed) => {
                let mut view = Self {
                    id,
                    from: Some(signed.body.from.to_string()),
                    nonce: Some(signed.body.nonce),
                    fee: Some(signed.body.fee.0),
                    ..Self::default()
                };
                match &signed.body.kind {
                    TxKind::Transfer { to, amount } => {
                        view.kind = "transfer".into();
                        view.to = Some(to.to_string());
                        view.amount = Some(amount.0);
                    }
                    TxKind::PostJob {
                        bounty, expires_at, ..
                    } => {
                        view.kind = "post_job".into();
                        view.job = tx.id().ok().map(|id| JobId(id.0).to_string());
                        view.bounty = Some(bounty.0);
                        view.expires_at = Some(expires_at.0);
                    }
                    TxKind::SubmitResult {
                        job,
                        result,
                        leaves,
                    } => {
                        view.kind = "submit_result".into();
                        view.job = Some(job.to_string());
                        view.segments_root = Some(result.segments_root.to_string());
                        view.loss_curve = Some(
                            leaves
                                .iter()
                                .skip(1)
                                .map(|l| f64::from(l.loss.to_f32()))
                                .collect(),
                        );
                    }
                    TxKind::FraudProof { job, claim } => {
                        view.kind = "fraud_proof".into();
                        view.job = Some(job.to_string());
                        view.claim = Some(match claim {
                            FraudClaim::InitialState { .. } => "initial_state".to_string(),
                            FraudClaim::Segment { index, .. } => format!("segment {index}"),
                            FraudClaim::Final { .. } => "final".to_string(),
                        });
                    }
                }
                view
            }
        }
    }
}

/// Where a transaction is: `GET /api/tx/{id}` answers the transaction's
/// [`TxView`] fields and these, side by side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TxLookup {
    /// The transaction.
    #[serde(flatten)]
    pub tx: TxView,
    /// The main-chain block holding it; absent while it waits in the mempool.
    pub block: Option<TxPlace>,
    /// Whether it waits in the mempool.
    pub in_mempool: bool,
}

/// A transaction's block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxPlace {
    /// The block's hash.
    pub hash: String,
    /// Its height.
    pub height: u64,
}

/// `POST /api/tx` accepted the transaction into the mempool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxAccepted {
    /// Its id.
    pub txid: String,
}

/// `POST /api/tx` body as JSON: the canonical bytes of a signed transaction
/// in hex (a bare hex body is accepted too).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxSubmission {
    /// The canonical encoding of the `SignedTx`, hex.
    pub hex: String,
}

/// `GET /api/address/{addr}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressView {
    /// The address.
    pub address: String,
    /// Balance at the tip, base units.
    pub balance: u64,
    /// Nonce at the tip.
    pub nonce: u64,
    /// The nonce the next transaction should carry, counting the address's
    /// transactions waiting in the mempool.
    pub next_nonce: u64,
    /// With `?proof`: a Merkle proof of the account (balance and nonce as
    /// above) under the state root of the tip's header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<ProofView>,
}

/// A state proof as `GET /api/address/{address}?proof` gives it: a light
/// client fetches the header of `tip` (which it checks by its proof of
/// work and chain), and checks the proof against that header's state root
/// with [`ProofView::verify`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofView {
    /// The block whose header's state root the proof is under.
    pub tip: String,
    /// Its height.
    pub height: u64,
    /// That state root.
    pub state_root: String,
    /// Whether the address has an account (absent: balance and nonce 0).
    pub exists: bool,
    /// Sibling hashes from the root down, hex.
    pub siblings: Vec<String>,
    /// The leaf at the end of the path (hex key and value), when there is
    /// one: the account's own, or another key's when it is absent.
    pub leaf: Option<(String, String)>,
}

impl ProofView {
    /// The view of `proof` under the state root of block `tip` at `height`.
    pub fn new(proof: &AccountProof, tip: BlockHash, height: Height, root: StateRoot) -> Self {
        Self {
            tip: tip.to_string(),
            height: height.0,
            state_root: root.to_string(),
            exists: proof.account.is_some(),
            siblings: proof.proof.siblings.iter().map(hex::encode).collect(),
            leaf: proof
                .proof
                .leaf
                .as_ref()
                .map(|(key, value)| (hex::encode(key), hex::encode(value))),
        }
    }

    /// The proof for `address` holding `balance` and `nonce` (as the
    /// address view states them), or why the view is malformed.
    pub fn account_proof(
        &self,
        address: Address,
        balance: u64,
        nonce: u64,
    ) -> Result<AccountProof, String> {
        fn hash(text: &str) -> Result<tree::Hash, String> {
            let mut out = [0u8; 32];
            hex::decode_to_slice(text, &mut out)
                .map_err(|_| format!("{text:?} is not 64 hex characters"))?;
            Ok(out)
        }
        Ok(AccountProof {
            address,
            account: self.exists.then_some(Account {
                balance: crate::types::Amount(balance),
                nonce,
            }),
            proof: tree::Proof {
                siblings: self
                    .siblings
                    .iter()
                    .map(|s| hash(s))
                    .collect::<Result<_, _>>()?,
                leaf: match &self.leaf {
                    Some((key, value)) => Some((hash(key)?, hash(value)?)),
                    None => None,
                },
            },
        })
    }

    /// Whether the proof shows `address` holding `balance` and `nonce`
    /// under `root` (a header's state root the client trusts).
    pub fn verify(&self, root: &StateRoot, address: Address, balance: u64, nonce: u64) -> bool {
        self.account_proof(address, balance, nonce)
            .is_ok_and(|proof| proof.verify(root))
    }
}

/// `GET /api/mempool`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MempoolView {
    /// Transactions waiting.
    pub count: u32,
    /// Their encoded bytes.
    pub bytes: u64,
    /// Their ids, at most [`MAX_MEMPOOL_LISTED`].
    pub txids: Vec<String>,
    /// Whether `txids` was cut at [`MAX_MEMPOOL_LISTED`].
    pub truncated: bool,
}

/// One connected peer in `/api/peers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    /// Its libp2p peer id.
    pub peer_id: String,
    /// The address of the connection, as a multiaddr.
    pub address: String,
    /// Misbehaviour score this node holds against it.
    pub score: u32,
}

/// `GET /api/peers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeersView {
    /// Connected peers.
    pub peers: Vec<PeerView>,
}

/// A fraud proof recorded against a job's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeView {
    /// Who proved (or failed to prove) fraud.
    pub challenger: String,
    /// The worker challenged.
    pub worker: String,
    /// The segment the claim is about (0: the initial state; n+1: the final
    /// check).
    pub segment: u32,
    /// The fraud-proof transaction.
    pub tx: String,
    /// Height of its block.
    pub height: u64,
    /// `proven` (the worker was slashed) or `refuted` (the challenger's
    /// bond was burned).
    pub outcome: String,
}

/// What this node's auditor did with a job's pending result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditView {
    /// `not_audited` (auditing off or nothing pending), `waiting_for_data`,
    /// `auditing`, `passed` or `fraud_found`.
    pub state: String,
    /// The result audited: its submission transaction.
    pub tx: Option<String>,
    /// Segments sampled for replay.
    pub sampled: u32,
    /// Segments replayed so far.
    pub replayed: u32,
    /// Replays that agreed with the committed leaves.
    pub agreed: u32,
    /// The segment found false, if any.
    pub fault_segment: Option<u32>,
    /// The fraud proof this node sent, if any.
    pub fraud_proof: Option<String>,
}

/// A result this node refused before it reached a block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectionView {
    /// The refused `SubmitResult` transaction.
    pub tx: String,
    /// Its signer.
    pub worker: String,
    /// Why, in the node's words.
    pub reason: String,
    /// When, Unix seconds.
    pub time: u64,
}

/// One job: `GET /api/jobs/{id}` and the entries of `/api/jobs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    /// Job id.
    pub id: String,
    /// `open`, `pending`, `fulfilled` or `expired`.
    pub status: String,
    /// Dataset digest.
    pub dataset: String,
    /// The model's layer widths, such as `4-16-3`.
    pub model: String,
    /// Bounty, base units.
    pub bounty: u64,
    /// Who posted it.
    pub poster: String,
    /// The worker of the pending or paid result.
    pub worker: Option<String>,
    /// Tensor digest of that result's weights.
    pub weights_digest: Option<String>,
    /// Height the result was paid at.
    pub fulfilled_at: Option<u64>,
    /// Height of the post.
    pub posted_at: u64,
    /// Height the job expires at if unanswered.
    pub expires_at: u64,
    /// Segments the training is cut into.
    pub segments: u32,
    /// The worker's bond (escrowed, or returned once paid).
    pub bond: u64,
    /// Blocks a result stays open to fraud proofs.
    pub challenge_window: u32,
    /// Height the current result was submitted at.
    pub pending_at: Option<u64>,
    /// Height the current result is (or was) paid at.
    pub settles_at: Option<u64>,
    /// Fraud proofs recorded against results of this job.
    pub challenges: Vec<ChallengeView>,
    /// The result's test accuracy (classification).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_accuracy: Option<f64>,
    /// The result's test MSE (regression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_mse: Option<f64>,
    /// The committed training loss after each segment of the current
    /// result, one point per segment (detail view only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_curve: Option<Vec<f64>>,
    /// This node's audit of the current result (detail view only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditView>,
    /// Results for this job this node refused, newest last (detail view
    /// only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejections: Option<Vec<RejectionView>>,
    /// In plain words: where the job stands and why a worker was or was not
    /// paid (detail view only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<String>,
}

impl JobView {
    /// The view of a job record; the detail fields are left empty.
    pub fn new(id: &JobId, job: &JobRecord) -> Self {
        let mut view = Self {
            id: id.to_string(),
            status: String::new(),
            dataset: job.spec.dataset.digest.to_string(),
            model: model_text(job),
            bounty: job.bounty.0,
            poster: job.poster.to_string(),
            worker: None,
            weights_digest: None,
            fulfilled_at: None,
            posted_at: job.posted_at.0,
            expires_at: job.expires_at.0,
            segments: job.spec.segments,
            bond: job.spec.bond.0,
            challenge_window: job.spec.challenge_window,
            pending_at: None,
            settles_at: None,
            challenges: job.challenges.iter().map(challenge_view).collect(),
            test_accuracy: None,
            test_mse: None,
            loss_curve: None,
            audit: None,
            rejections: None,
            explanation: None,
        };
        let metric = match &job.status {
            JobStatus::Open => {
                view.status = "open".into();
                None
            }
            JobStatus::Pending {
                worker,
                result,
                height,
                settles_at,
                bond,
                ..
            } => {
                view.status = "pending".into();
                view.worker = Some(worker.to_string());
                view.weights_digest = Some(result.weights.to_string());
                view.pending_at = Some(height.0);
                view.settles_at = Some(settles_at.0);
                view.bond = bond.0;
                Some(result.metric)
            }
            JobStatus::Fulfilled {
                worker,
                result,
                height,
                submitted_at,
                bond,
                ..
            } => {
                view.status = "fulfilled".into();
                view.worker = Some(worker.to_string());
                view.weights_digest = Some(result.weights.to_string());
                view.pending_at = Some(submitted_at.0);
                view.settles_at = Some(height.0);
                view.fulfilled_at = Some(height.0);
                view.bond = bond.0;
                Some(result.metric)
            }
            JobStatus::Expired { .. } => {
                view.status = "expired".into();
                None
            }
        };
        match metric {
            Some(TestMetric::Accuracy { correct, total }) => {
                view.test_accuracy = Some(if total == 0 {
                    0.0
                } else {
                    f64::from(correct) / f64::from(total)
                });
            }
            Some(TestMetric::Mse(mse)) => view.test_mse = Some(f64::from(mse.to_f32())),
            None => {}
        }
        view
    }
}

/// `GET /api/jobs[?status=…&order=id|recent&cursor=…&limit=…]`: jobs in
/// id order (or most recent activity first) after `cursor`, at most `limit`
/// (default [`JOBS_PAGE`], at most [`MAX_JOBS_PAGE`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobsPage {
    /// The jobs.
    pub jobs: Vec<JobView>,
    /// The `cursor` of the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// `POST /api/blobs` stored the body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobStored {
    /// SHA-256 of the bytes: the name to fetch it by.
    pub digest: String,
    /// Its length.
    pub bytes: u64,
}

/// `POST /api/jobs/{id}/predict` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictRequest {
    /// Raw (unstandardized) input rows, each as wide as the dataset's
    /// features; at most [`MAX_PREDICT_ROWS`].
    pub rows: Vec<Vec<f32>>,
}

/// One prediction: a class with every class's probability, or a value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The predicted class (classification).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<u32>,
    /// Probabilities by class (classification).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probabilities: Option<Vec<f32>>,
    /// The predicted value (regression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f32>,
}

/// `POST /api/jobs/{id}/predict` answer, one prediction per row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Predictions {
    /// The predictions, in row order.
    pub predictions: Vec<Prediction>,
}

fn challenge_view(c: &crate::state::Challenge) -> ChallengeView {
    ChallengeView {
        challenger: c.challenger.to_string(),
        worker: c.worker.to_string(),
        segment: c.segment,
        tx: c.tx.to_string(),
        height: c.height.0,
        outcome: match c.outcome {
            ChallengeOutcome::Proven => "proven".into(),
            ChallengeOutcome::Refuted => "refuted".into(),
        },
    }
}

fn model_text(job: &JobRecord) -> String {
    let mut widths = vec![job.spec.dataset.features.to_string()];
    widths.extend(job.spec.model.hidden.iter().map(u32::to_string));
    widths.push(job.spec.outputs().to_string());
    widths.join("-")
}

/// `/api/events` event `reorg`: the main chain switched branches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReorgEvent {
    /// Blocks disconnected.
    pub depth: u64,
    /// The old tip.
    pub old_tip: String,
    /// The new tip.
    pub new_tip: String,
    /// The new tip's height.
    pub height: u64,
}

/// `/api/events` event `tx`: a transaction was offered to the mempool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxEvent {
    /// Its id.
    pub id: String,
    /// Its kind, as in [`TxView::kind`].
    pub kind: String,
    /// Whether the mempool took it.
    pub accepted: bool,
    /// Why not, when refused.
    pub reason: Option<String>,
}

/// `/api/events` event `job`: a block changed a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    /// Job id.
    pub id: String,
    /// Its status after the block, as in [`JobView::status`]; `removed`
    /// when a reorg took its post away.
    pub status: String,
    /// Height of the block.
    pub height: u64,
}

/// `/api/events` event `audit`: this node's auditor moved on a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Job id.
    pub job: String,
    /// The audit, as [`JobView::audit`] shows it.
    #[serde(flatten)]
    pub audit: AuditView,
}

/// One point of `/api/hashrate`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct HashrateSample {
    /// Unix seconds.
    pub time: u64,
    /// Tip height then.
    pub height: u64,
    /// This node's miner, hashes per second.
    pub hashrate: u64,
    /// The network's, estimated from the work and times of recent blocks.
    pub network_hashrate: f64,
}

/// `GET /api/hashrate`: samples of the last hour, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HashrateView {
    /// The samples.
    pub samples: Vec<HashrateSample>,
}

/// The status word of a job status, as [`JobView::status`] uses.
pub fn status_word(status: &JobStatus) -> &'static str {
    match status {
        JobStatus::Open => "open",
        JobStatus::Pending { .. } => "pending",
        JobStatus::Fulfilled { .. } => "fulfilled",
        JobStatus::Expired { .. } => "expired",
    }
}

//! Transactions: signed account transactions (transfers, job posts, results
//! and fraud proofs) and the coinbase.
//!
//! A signature covers a domain tag, the chain id and the canonical encoding
//! of the body, so a transaction signed for one chain is invalid on every
//! other. Verification is ed25519 `verify_strict`: non-canonical signatures
//! and small-order keys are refused, so nobody but the signer can produce a
//! second valid encoding of a transaction.

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::hash::sha256d_parts;
use crate::job::{JobResult, JobSpec};
use crate::segments::SegmentLeaf;
use crate::types::Digest;
use crate::types::{Address, Amount, Height, JobId, Signature, TxId};

/// Domain tag in front of every signed message.
const SIGNING_TAG: &[u8] = b"gradchain/tx/v1";

/// What a signed transaction does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxKind {
    /// Moves `amount` from the signer to `to`.
    Transfer {
        /// The receiver.
        to: Address,
        /// How much.
        amount: Amount,
    },
    /// Posts a training job, escrowing `bounty` from the signer until a valid
    /// result claims it or the job expires at height `expires_at`.
    PostJob {
        /// The reproducibility manifest.
        spec: JobSpec,
        /// The reward for the first valid result.
        bounty: Amount,
        /// The first height at which the job is no longer open.
        expires_at: Height,
    },
    /// Claims a job's bounty with a training result, trained by the signer,
    /// escrowing the job's bond until the result settles.
    SubmitResult {
        /// The job.
        job: JobId,
        /// What the training produced.
        result: JobResult,
        /// The segment leaves `0..=segments`; their root is
        /// `result.segments_root`. They travel in the transaction so that
        /// the commitment a challenger must open is as available as the
        /// chain itself, and they carry the loss curve.
        leaves: Vec<SegmentLeaf>,
    },
    /// Claims that a pending result is false, escrowing the chain's
    /// fraud-proof bond: slashes the worker if a replay confirms the claim,
    /// burns the bond if it does not.
    FraudProof {
        /// The job whose pending result is challenged.
        job: JobId,
        /// What is wrong with it.
        claim: FraudClaim,
    },
}

/// A leaf of a pending result with its Merkle path to the result's root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenedLeaf {
    /// The leaf.
    pub leaf: SegmentLeaf,
    /// Siblings from the leaf to the root, bottom first.
    pub path: Vec<Digest>,
}

/// The fault a fraud proof asserts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FraudClaim {
    /// Leaf 0 does not commit to the state derived from the worker's seed.
    InitialState {
        /// Leaf 0.
        first: OpenedLeaf,
    },
    /// Replaying segment `index` from the state of leaf `index − 1` does not
    /// give leaf `index`. The challenger serves that state as a blob; its
    /// digest is in `prev`.
    Segment {
        /// The segment, `1..=segments`.
        index: u32,
        /// Leaf `index − 1`.
        prev: OpenedLeaf,
        /// Leaf `index`.
        leaf: OpenedLeaf,
    },
    /// The weights, the last-epoch loss or the test metric do not follow
    /// from the final state (leaf `segments`).
    Final {
        /// Leaf `segments`.
        last: OpenedLeaf,
    },
}

impl FraudClaim {
    /// The segment the claim is about: 0 for the initial state, the
    /// segment count plus one for the final check.
    pub fn segment(&self, segments: u32) -> u32 {
        match self {
            Self::InitialState { .. } => 0,
            Self::Segment { index, .. } => *index,
            Self::Final { .. } => segments.saturating_add(1),
        }
    }
}

/// The signed part of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxBody {
    /// The signer and payer.
    pub from: Address,
    /// The signer's account nonce: its count of earlier transactions.
    pub nonce: u64,
    /// Paid to the miner.
    pub fee: Amount,
    /// What the transaction does.
    pub kind: TxKind,
}

impl TxBody {
    /// The bytes the signature covers: tag, chain id, encoded body.
    pub fn signing_bytes(&self, chain_id: u32) -> Result<Vec<u8>, CodecError> {
        let body = codec::encode(self)?;
        let mut out = Vec::with_capacity(
            SIGNING_TAG
                .len()
                .saturating_add(4)
                .saturating_add(body.len()),
        );
        out.extend_from_slice(SIGNING_TAG);
        out.extend_from_slice(&chain_id.to_le_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// The encoded size of this body once signed. Integers are fixed-width,
    /// so the size does not depend on the fee: a fee can be priced from it
    /// before signing.
    pub fn signed_len(&self) -> Result<usize, CodecError> {
        let body = codec::encode(self)?.len();
        let signature = codec::encode(&Signature([0; 64]))?.len();
        Ok(body.saturating_add(signature))
    }

    /// The least fee this body may carry at `rate` a byte; `None` when the
    /// product overflows.
    pub fn min_fee_at(&self, rate: Amount) -> Result<Option<Amount>, CodecError> {
        let size = u64::try_from(self.signed_len()?).unwrap_or(u64::MAX);
        Ok(rate.0.checked_mul(size).map(Amount))
    }

    /// Signs the body for `chain_id`. The body's `from` is set to `key`'s
    /// address.
    pub fn sign(mut self, key: &SigningKey, chain_id: u32) -> Result<SignedTx, CodecError> {
        self.from = Address::from_verifying_key(&key.verifying_key());
        let message = self.signing_bytes(chain_id)?;
        let signature = Signature(key.sign(&message).to_bytes());
        Ok(SignedTx {
            body: self,
            signature,
        })
    }
}

/// Why a signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The `from` bytes are not an ed25519 public key.
    #[error("address {0} is not a valid ed25519 public key")]
    BadPublicKey(Address),
    /// The signature does not verify for this body, key and chain.
    #[error("signature does not verify for address {0} on this chain")]
    BadSignature(Address),
    /// The body could not be encoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// A transaction signed by its sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTx {
    /// The signed body.
    pub body: TxBody,
    /// ed25519 over [`TxBody::signing_bytes`].
    pub signature: Signature,
}

impl SignedTx {
    /// Checks the signature strictly against `from` for `chain_id`.
    pub fn verify_signature(&self, chain_id: u32) -> Result<(), SignatureError> {
        let key = VerifyingKey::from_bytes(self.body.from.as_bytes())
            .map_err(|_| SignatureError::BadPublicKey(self.body.from))?;
        let message = self.body.signing_bytes(chain_id)?;
        let signature = ed25519_dalek::Signature::from_bytes(&self.signature.0);
        key.verify_strict(&message, &signature)
            .map_err(|_| SignatureError::BadSignature(self.body.from))
    }

    /// The transaction id.
    pub fn id(&self) -> Result<TxId, CodecError> {
        Ok(TxId(sha256d_parts(&[b"tx", &codec::encode(self)?])))
    }

    /// The encoded size in bytes.
    pub fn encoded_len(&self) -> Result<usize, CodecError> {
        codec::encode(self).map(|bytes| bytes.len())
    }
}

/// The first transaction of every block: pays the subsidy and the block's
/// fees to the miner. The height makes every coinbase unique.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coinbase {
    /// Height of the block it opens.
    pub height: Height,
    /// Who is paid.
    pub miner: Address,
    /// How much: at most subsidy plus fees.
    pub amount: Amount,
}

impl Coinbase {
    /// The coinbase's id.
    pub fn id(&self) -> Result<TxId, CodecError> {
        Ok(TxId(sha256d_parts(&[b"cb", &codec::encode(self)?])))
    }
}

/// A transaction in a block.
#[allow(clippy::large_enum_variant)] // one coinbase per block; boxing buys nothing
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transaction {
    /// The block reward; only first in a block.
    Coinbase(Coinbase),
    /// An account transaction.
    Signed(SignedTx),
}

impl Transaction {
    /// The id, the same as the inner transaction's.
    pub fn id(&self) -> Result<TxId, CodecError> {
        match self {
            Self::Coinbase(coinbase) => coinbase.id(),
            Self::Signed(tx) => tx.id(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn transfer() -> TxBody {
        TxBody {
            from: Address::ZERO,
            nonce: 0,
            fee: Amount(1),
            kind: TxKind::Transfer {
                to: Address([9; 32]),
                amount: Amount(10),
            },
        }
    }

    #[test]
    fn a_fee_is_priced_before_signing_from_the_signed_size() {
        for fee in [0, 1, u64::MAX] {
            let mut body = transfer();
            body.fee = Amount(fee);
            let len = body.signed_len().unwrap();
            assert_eq!(
                len,
                body.clone()
                    .sign(&key(1), 7)
                    .unwrap()
                    .encoded_len()
                    .unwrap()
            );
            assert_eq!(
                len,
                transfer().signed_len().unwrap(),
                "size is independent of the fee"
            );
            assert_eq!(
                body.min_fee_at(Amount(3)).unwrap(),
                Some(Amount(3 * len as u64))
            );
        }
        assert_eq!(transfer().min_fee_at(Amount(u64::MAX)).unwrap(), None);
    }

    #[test]
    fn signature_binds_body_key_and_chain() {
        let tx = transfer().sign(&key(1), 7).unwrap();
        tx.verify_signature(7).unwrap();
        assert_eq!(
            tx.verify_signature(8),
            Err(SignatureError::BadSignature(tx.body.from))
        );
        let mut tampered = tx.clone();
        tampered.body.fee = Amount(2);
        assert!(matches!(
            tampered.verify_signature(7),
            Err(SignatureError::BadSignature(_))
        ));
    }

    #[test]
    fn coinbase_and_signed_ids_are_domain_separated() {
        let tx = transfer().sign(&key(1), 7).unwrap();
        assert_eq!(
            Transaction::Signed(tx.clone()).id().unwrap(),
            tx.id().unwrap()
        );
        let cb = Coinbase {
            height: Height(1),
            miner: Address::ZERO,
            amount: Amount(5),
        };
        assert_ne!(cb.id().unwrap(), tx.id().unwrap());
    }
}

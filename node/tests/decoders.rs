//! Property tests of what the node decodes from peers: the length-prefixed
//! frame reader of its request-response protocols, and the sync and blob
//! messages inside the frames (`net::wire`), decoded under the same limits
//! the handlers use.
//!
//! The frame reader returns exactly the announced body or a typed I/O
//! error, reads nothing past its frame, refuses an over-long frame after
//! its four length bytes, gives the same answer however the bytes are cut
//! into reads, and never allocates what a peer announces but does not send.
//! The messages round-trip; every strict prefix and every extension of an
//! encoding is refused; arbitrary and mutated bytes are refused or decode to
//! a value that re-encodes to exactly those bytes; announced lengths far
//! beyond the input are refused without being allocated. A counting
//! allocator in this test binary measures the allocations.
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Debug;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::executor::block_on;
use futures::io::Cursor;
use futures::{AsyncRead, FutureExt as _};
use libp2p::request_response::Codec as _;
use libp2p::StreamProtocol;
use node::net::wire::{
    BlobRequest, BlobResponse, FrameCodec, SyncRequest, SyncResponse, MAX_BLOB_FRAME,
    MAX_SYNC_FRAME, SYNC_PROTOCOL,
};
use proptest::prelude::*;
use proptest::sample::Index;
use protocol::blob::{chunk_count, BlobKind, BlobManifest, BlobName, BLOB_CHUNK_BYTES};
use protocol::codec::{self, CodecError, MAX_DECODE_BYTES};
use protocol::{
    Address, Amount, Block, BlockHash, Coinbase, CompactTarget, Digest, F32Bits, Header, Height,
    JobId, JobResult, MerkleRoot, SegmentLeaf, Signature, SignedTx, StateRoot, TestMetric,
    Transaction, TxBody, TxKind,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

// ---------------------------------------------------------------------------
// The largest single allocation a thread makes, measured around a decode.

/// The system allocator, noting per thread the largest block asked for.
struct Measuring;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the slot is gone while a thread is being torn down.
    let _ = LARGEST.try_with(|largest| {
        if size > largest.get() {
            largest.set(size);
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; the only addition
// is a thread-local counter that never allocates.
unsafe impl GlobalAlloc for Measuring {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Measuring = Measuring;

/// Runs `f`, returning its value and the largest single allocation it made
/// on this thread.
fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|largest| largest.set(0));
    let value = f();
    (value, LARGEST.with(Cell::get))
}

/// The most memory one allocation of a decode may take per byte of its
/// input: the codec caps a sequence's size hint at the input's length, so
/// serde preallocates at most one element per input byte, and no element
/// decoded here is larger than this in memory
/// (`elements_fit_the_allocation_bound`); strings and byte buffers are
/// allocated only once their bytes are known to be there.
const MEMORY_PER_INPUT_BYTE: usize = 512;

/// The largest single allocation decoding `input_len` bytes may make.
fn allocation_bound(input_len: usize) -> usize {
    MEMORY_PER_INPUT_BYTE * input_len.max(1)
}

/// The most of a frame's body the reader asks for at once.
const FRAME_READ_STEP: usize = 64 * 1024;

// ---------------------------------------------------------------------------
// The frame reader, through the request-response codec the swarm uses.

fn protocol_name() -> StreamProtocol {
    StreamProtocol::new(SYNC_PROTOCOL)
}

/// Reads one request frame from `io` under `max`.
fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    block_on(FrameCodec::new(max).read_request(&protocol_name(), io))
}

/// Writes `body` as one response frame under `max`.
fn write_frame(body: &[u8], max: usize) -> io::Result<Vec<u8>> {
    let mut out = Cursor::new(Vec::new());
    block_on(FrameCodec::new(max).write_response(&protocol_name(), &mut out, body.to_vec()))?;
    Ok(out.into_inner())
}

/// What reading one frame from `stream` under `max` must give: the body,
/// or the error kind and how many bytes the reader may have taken.
fn frame_verdict(stream: &[u8], max: usize) -> Result<&[u8], (io::ErrorKind, usize)> {
    let Some(len) = stream.get(..4) else {
        return Err((io::ErrorKind::UnexpectedEof, stream.len()));
    };
    let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
    if len > max {
        return Err((io::ErrorKind::InvalidData, 4));
    }
    stream
        .get(4..4 + len)
        .ok_or((io::ErrorKind::UnexpectedEof, stream.len()))
}

/// A peer that sends its bytes in pieces of the given sizes, then stalls
/// or hangs up, noting the largest read it was asked for.
struct Peer {
    data: Vec<u8>,
    sent: usize,
    pieces: Vec<usize>,
    reads: usize,
    hang_up: bool,
    largest_ask: usize,
}

impl Peer {
    fn new(data: Vec<u8>, pieces: Vec<usize>, hang_up: bool) -> Self {
        Self {
            data,
            sent: 0,
            pieces,
            reads: 0,
            hang_up,
            largest_ask: 0,
        }
    }
}

impl AsyncRead for Peer {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.largest_ask = self.largest_ask.max(buf.len());
        let rest = self.data.len() - self.sent;
        if rest == 0 {
            return if self.hang_up {
                Poll::Ready(Ok(0))
            } else {
                Poll::Pending
            };
        }
        let piece = self.pieces[self.reads % self.pieces.len()];
        self.reads += 1;
        let n = piece.min(rest).min(buf.len());
        let start = self.sent;
        buf[..n].copy_from_slice(&self.data[start..start + n]);
        self.sent += n;
        Poll::Ready(Ok(n))
    }
}

fn stream_with_length() -> impl Strategy<Value = (Vec<u8>, usize)> {
    (
        prop::collection::vec(any::<u8>(), 0..600),
        0usize..700,
        any::<Option<Index>>(),
        any::<bool>(),
    )
        .prop_map(|(mut bytes, max, announce, extra)| {
            // Often a length prefix that fits what follows, or is off by one.
            if let Some(at) = announce {
                if bytes.len() >= 4 {
                    let body = bytes.len() - 4;
                    let len = match at.index(3) {
                        0 => body,
                        1 => body.saturating_sub(usize::from(extra)),
                        _ => body + 1,
                    };
                    bytes[..4].copy_from_slice(&(len as u32).to_le_bytes());
                }
            }
            (bytes, max)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    /// Any byte stream: the frame's body exactly, or the typed error a
    /// short or over-long frame calls for; never a byte past the frame,
    /// and an over-long frame's body is never read.
    #[test]
    fn frames_read_exactly_their_announced_body(
        (stream, max) in stream_with_length(),
        pieces in prop::collection::vec(1usize..700, 1..4),
    ) {
        let mut whole = Cursor::new(stream.clone());
        let read = read_frame(&mut whole, max);
        match (frame_verdict(&stream, max), &read) {
            (Ok(body), Ok(got)) => {
                prop_assert_eq!(&got[..], body);
                prop_assert_eq!(whole.position() as usize, 4 + body.len());
            }
            (Err((kind, taken)), Err(err)) => {
                prop_assert_eq!(err.kind(), kind, "{}", err);
                if kind == io::ErrorKind::InvalidData {
                    prop_assert_eq!(whole.position(), 4, "only the length is read");
                }
                prop_assert!(whole.position() as usize <= taken);
            }
            (verdict, read) => prop_assert!(false, "expected {:?}, read {:?}", verdict, read),
        }
        // Cut into reads of other sizes, the answer is the same.
        let mut peer = Peer::new(stream.clone(), pieces, true);
        let pieced = read_frame(&mut peer, max);
        prop_assert_eq!(
            pieced.as_ref().map_err(io::Error::kind),
            read.as_ref().map_err(io::Error::kind)
        );
    }

    /// A frame written under a cap is read back whole under that cap; a
    /// body over the cap is refused when written.
    #[test]
    fn frames_round_trip_under_their_cap(
        body in prop::collection::vec(any::<u8>(), 0..3000),
        max in 0usize..3500,
        pieces in prop::collection::vec(1usize..5000, 1..4),
    ) {
        match write_frame(&body, max) {
            Ok(written) => {
                prop_assert!(body.len() <= max);
                prop_assert_eq!(&written[..4], &(body.len() as u32).to_le_bytes()[..]);
                let mut peer = Peer::new(written, pieces, true);
                prop_assert_eq!(read_frame(&mut peer, max).unwrap(), body);
            }
            Err(err) => {
                prop_assert!(body.len() > max);
                prop_assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// A peer that announces up to the sync cap and sends a little of it,
    /// then stalls or hangs up, costs at most one read step plus twice what
    /// it sent: never the announced length.
    #[test]
    fn an_announced_frame_is_not_allocated_before_it_arrives(
        announced in 1u32..=MAX_SYNC_FRAME as u32,
        sent in 0usize..200_000,
        pieces in prop::collection::vec(1usize..100_000, 1..4),
        hang_up in any::<bool>(),
    ) {
        let sent = sent.min(announced as usize - 1);
        let mut data = announced.to_le_bytes().to_vec();
        data.resize(4 + sent, 7);
        let mut peer = Peer::new(data, pieces, hang_up);
        let (result, largest) = largest_allocation(|| {
            FrameCodec::new(MAX_SYNC_FRAME)
                .read_request(&protocol_name(), &mut peer)
                .now_or_never()
        });
        match result {
            None => prop_assert!(!hang_up, "a stalled peer is waited for"),
            Some(Err(err)) => {
                prop_assert!(hang_up);
                prop_assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
            }
            Some(Ok(body)) => prop_assert!(false, "{} of {} bytes read as a frame", body.len(), announced),
        }
        prop_assert_eq!(peer.sent, 4 + sent);
        prop_assert!(peer.largest_ask <= FRAME_READ_STEP.max(4));
        let bound = FRAME_READ_STEP.max(2 * sent) + 1024;
        prop_assert!(largest <= bound, "{} bytes for {} sent of {}", largest, sent, announced);
    }
}

// ---------------------------------------------------------------------------
// The properties every message decoder shares.

/// Decodes `bytes` as a `T` under `max`. Every outcome must be a typed
/// error or a canonical value; returns the value when there is one.
fn decode_checked<T>(bytes: &[u8], max: usize) -> Result<Option<T>, TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    match codec::decode_with_limit::<T>(bytes, max) {
        Ok(value) => {
            prop_assert_eq!(
                &codec::encode(&value).unwrap()[..],
                bytes,
                "a decoded value re-encodes to other bytes"
            );
            Ok(Some(value))
        }
        Err(CodecError::TooLarge { len, max: cap }) => {
            prop_assert_eq!(len, bytes.len());
            prop_assert_eq!(cap, max.min(MAX_DECODE_BYTES));
            prop_assert!(len > cap);
            Ok(None)
        }
        Err(CodecError::TrailingBytes { consumed, len }) => {
            prop_assert_eq!(len, bytes.len());
            prop_assert!(consumed < len);
            let head = codec::decode_with_limit::<T>(&bytes[..consumed], max).unwrap();
            prop_assert_eq!(&codec::encode(&head).unwrap()[..], &bytes[..consumed]);
            Ok(None)
        }
        Err(CodecError::Malformed(message)) => {
            prop_assert!(!message.is_empty());
            Ok(None)
        }
        Err(CodecError::Encode(message)) => Err(TestCaseError::fail(format!(
            "decoding reported an encoding error: {message}"
        ))),
    }
}

/// Round trip under `max`, a few strict prefixes, and an extension.
fn check_valid<T>(value: &T, max: usize, cuts: &[Index]) -> Result<Vec<u8>, TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = codec::encode(value).unwrap();
    let decoded = codec::decode_with_limit::<T>(&bytes, max);
    prop_assert_eq!(decoded.as_ref(), Ok(value));
    let mut prefixes = vec![0, bytes.len() - 1];
    prefixes.extend(cuts.iter().map(|cut| cut.index(bytes.len())));
    for cut in prefixes {
        let result = codec::decode_with_limit::<T>(&bytes[..cut], max);
        prop_assert!(
            matches!(result, Err(CodecError::Malformed(_))),
            "the first {} of {} bytes gave {:?}",
            cut,
            bytes.len(),
            result
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    prop_assert_eq!(
        codec::decode_with_limit::<T>(&longer, max),
        Err(CodecError::TrailingBytes {
            consumed: bytes.len(),
            len: longer.len()
        })
    );
    Ok(bytes)
}

/// One change to an encoding.
#[derive(Clone, Debug)]
enum Mutation {
    Set(Index, u8),
    Flip(Index, u8),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    /// Overwrite up to eight bytes with a little-endian tag, count or length.
    Word(Index, u64),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let word = prop_oneof![
        Just(0u64),
        Just(1),
        Just(2),
        Just(3),
        Just(u64::from(u32::MAX)),
        Just(u64::MAX),
        Just(1 << 40),
        0u64..64,
        any::<u64>(),
    ];
    let mutation = prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set(at, byte)),
        (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..9))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        (any::<Index>(), 1usize..9).prop_map(|(at, n)| Mutation::Remove(at, n)),
        (any::<Index>(), word).prop_map(|(at, word)| Mutation::Word(at, word)),
    ];
    prop::collection::vec(mutation, 1..4)
}

fn mutate(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for mutation in mutations {
        let len = bytes.len();
        match mutation {
            Mutation::Insert(at, new) => {
                let at = at.index(len + 1);
                bytes.splice(at..at, new.iter().copied());
            }
            _ if len == 0 => {}
            Mutation::Set(at, byte) => bytes[at.index(len)] = *byte,
            Mutation::Flip(at, bit) => bytes[at.index(len)] ^= 1 << bit,
            Mutation::Remove(at, n) => {
                let at = at.index(len);
                bytes.drain(at..(at + n).min(len));
            }
            Mutation::Word(at, word) => {
                let at = at.index(len);
                for (dst, src) in bytes[at..].iter_mut().zip(word.to_le_bytes()) {
                    *dst = src;
                }
            }
        }
    }
}

/// A mutated encoding of `original`, decoded under `max`: refused, or
/// canonical and different exactly when the bytes are.
fn check_mutated<T>(
    original: &T,
    max: usize,
    mutations: &[Mutation],
) -> Result<Option<T>, TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let valid = codec::encode(original).unwrap();
    let mut bytes = valid.clone();
    mutate(&mut bytes, mutations);
    let decoded = decode_checked::<T>(&bytes, max)?;
    if let Some(value) = &decoded {
        prop_assert_eq!(value == original, bytes == valid);
    }
    Ok(decoded)
}

/// Writes `announced` as eight bytes at `at` and decodes under a limit of
/// the input's own length: refused or canonical, and no allocation larger
/// than a bounded multiple of the input.
fn check_announced<T>(bytes: &[u8], at: usize, announced: u64) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let mut hostile = bytes.to_vec();
    for (dst, src) in hostile[at..].iter_mut().zip(announced.to_le_bytes()) {
        *dst = src;
    }
    let max = hostile.len();
    let (_, largest) = largest_allocation(|| codec::decode_with_limit::<T>(&hostile, max));
    decode_checked::<T>(&hostile, max)?;
    prop_assert!(
        largest <= allocation_bound(hostile.len()),
        "{} announced at byte {} of {}: an allocation of {} bytes",
        announced,
        at,
        hostile.len(),
        largest
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Generators.

fn arb_digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest)
}

fn arb_header() -> BoxedStrategy<Header> {
    (
        any::<u32>(),
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(|(version, prev, merkle, state, time, bits, nonce)| Header {
            version,
            prev: BlockHash(prev),
            merkle_root: MerkleRoot(merkle),
            state_root: StateRoot(state),
            time,
            bits: CompactTarget(bits),
            nonce,
        })
        .boxed()
}

/// Coinbases, transfers and results with leaves: the transaction shapes
/// whose lengths and tags a block's decoding crosses.
fn arb_tx() -> BoxedStrategy<Transaction> {
    let signature = (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(low, high)| {
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&low);
        bytes[32..].copy_from_slice(&high);
        Signature(bytes)
    });
    let kind = prop_oneof![
        (arb_digest(), any::<u64>()).prop_map(|(to, amount)| TxKind::Transfer {
            to: Address(to.0),
            amount: Amount(amount),
        }),
        (
            arb_digest(),
            arb_digest(),
            any::<u32>(),
            prop::collection::vec((arb_digest(), any::<u32>()), 0..12),
        )
            .prop_map(|(job, weights, loss, leaves)| TxKind::SubmitResult {
                job: JobId(job.0),
                result: JobResult {
                    weights,
                    segments_root: weights,
                    train_loss: F32Bits(loss),
                    metric: TestMetric::Mse(F32Bits(loss)),
                },
                leaves: leaves
                    .into_iter()
                    .map(|(state, loss)| SegmentLeaf {
                        state,
                        loss: F32Bits(loss),
                    })
                    .collect(),
            }),
    ];
    prop_oneof![
        (any::<u64>(), arb_digest(), any::<u64>()).prop_map(|(height, miner, amount)| {
            Transaction::Coinbase(Coinbase {
                height: Height(height),
                miner: Address(miner.0),
                amount: Amount(amount),
            })
        }),
        (arb_digest(), any::<u64>(), any::<u64>(), kind, signature).prop_map(
            |(from, nonce, fee, kind, signature)| {
                Transaction::Signed(SignedTx {
                    body: TxBody {
                        from: Address(from.0),
                        nonce,
                        fee: Amount(fee),
                        kind,
                    },
                    signature,
                })
            }
        ),
    ]
    .boxed()
}

fn arb_block() -> BoxedStrategy<Block> {
    (arb_header(), prop::collection::vec(arb_tx(), 0..4))
        .prop_map(|(header, txs)| Block { header, txs })
        .boxed()
}

fn arb_hashes() -> impl Strategy<Value = Vec<BlockHash>> {
    prop::collection::vec(any::<[u8; 32]>().prop_map(BlockHash), 0..20)
}

fn arb_sync_request() -> BoxedStrategy<SyncRequest> {
    prop_oneof![
        arb_hashes().prop_map(|locator| SyncRequest::GetHeaders { locator }),
        arb_hashes().prop_map(|hashes| SyncRequest::GetBlocks { hashes }),
    ]
    .boxed()
}

fn arb_sync_response() -> BoxedStrategy<SyncResponse> {
    prop_oneof![
        prop::collection::vec(arb_header(), 0..12).prop_map(SyncResponse::Headers),
        prop::collection::vec(arb_block(), 0..3).prop_map(SyncResponse::Blocks),
        ".{0,40}".prop_map(SyncResponse::Error),
    ]
    .boxed()
}

fn arb_blob_name() -> impl Strategy<Value = BlobName> {
    prop_oneof![
        arb_digest().prop_map(BlobName::Content),
        arb_digest().prop_map(BlobName::Weights),
    ]
}

fn arb_blob_request() -> BoxedStrategy<BlobRequest> {
    prop_oneof![
        arb_blob_name().prop_map(BlobRequest::Manifest),
        (arb_digest(), any::<u32>())
            .prop_map(|(digest, index)| BlobRequest::Chunk { digest, index }),
    ]
    .boxed()
}

/// A manifest that passes `check`; lengths favour chunk boundaries.
fn arb_manifest() -> BoxedStrategy<BlobManifest> {
    let chunk = u64::from(BLOB_CHUNK_BYTES);
    let kind = prop_oneof![
        Just(BlobKind::Dataset),
        Just(BlobKind::Weights),
        Just(BlobKind::State),
    ];
    (kind, any::<Index>(), -1i64..=1, arb_digest())
        .prop_flat_map(move |(kind, at, nudge, digest)| {
            let max = kind.max_bytes();
            let total = (at.index((max / chunk) as usize + 1) as u64 * chunk)
                .saturating_add_signed(nudge)
                .min(max);
            prop::collection::vec(arb_digest(), chunk_count(total) as usize).prop_map(
                move |chunks| BlobManifest {
                    digest,
                    kind,
                    total,
                    chunks,
                },
            )
        })
        .boxed()
}

fn arb_blob_response() -> BoxedStrategy<BlobResponse> {
    prop_oneof![
        arb_manifest().prop_map(BlobResponse::Manifest),
        (any::<u32>(), prop::collection::vec(any::<u8>(), 0..400))
            .prop_map(|(index, bytes)| BlobResponse::Chunk { index, bytes }),
        Just(BlobResponse::NotFound),
    ]
    .boxed()
}

/// Whether a manifest's length fits its kind and its chunk list its length.
fn manifest_fits(manifest: &BlobManifest) -> bool {
    manifest.total <= manifest.kind.max_bytes()
        && manifest.chunks.len() as u64 == chunk_count(manifest.total)
}

fn cuts() -> impl Strategy<Value = Vec<Index>> {
    prop::collection::vec(any::<Index>(), 6)
}

// ---------------------------------------------------------------------------
// Sync and blob messages, under the caps their handlers decode them with.

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn sync_requests_round_trip_and_mutations_are_refused_or_canonical(
        request in arb_sync_request(),
        cuts in cuts(),
        mutations in mutations(),
        at in any::<Index>(),
        announced in prop_oneof![Just(u64::MAX), (1u64 << 20)..u64::MAX, 21u64..(1 << 20)],
    ) {
        let bytes = check_valid(&request, MAX_SYNC_FRAME, &cuts)?;
        check_mutated(&request, MAX_SYNC_FRAME, &mutations)?;
        // variant tag (4) | hash count (8) | hashes
        check_announced::<SyncRequest>(&bytes, 4, announced)?;
        check_announced::<SyncRequest>(&bytes, at.index(bytes.len() - 7), announced)?;
    }

    #[test]
    fn blob_requests_round_trip_and_mutations_are_refused_or_canonical(
        request in arb_blob_request(),
        mutations in mutations(),
    ) {
        let bytes = check_valid(&request, MAX_BLOB_FRAME, &[])?;
        for cut in 0..bytes.len() {
            prop_assert!(codec::decode_with_limit::<BlobRequest>(&bytes[..cut], MAX_BLOB_FRAME).is_err());
        }
        check_mutated(&request, MAX_BLOB_FRAME, &mutations)?;
    }

    /// A blob response is refused or canonical; a manifest in one passes
    /// `check` exactly when its length fits its kind and its chunk list its
    /// length, and one that passes fits a blob frame.
    #[test]
    fn blob_responses_round_trip_and_mutations_are_refused_or_canonical(
        response in arb_blob_response(),
        cuts in cuts(),
        mutations in mutations(),
        announced in prop_oneof![Just(u64::MAX), (1u64 << 32)..u64::MAX],
    ) {
        let bytes = check_valid(&response, MAX_BLOB_FRAME, &cuts)?;
        if let Some(BlobResponse::Manifest(manifest)) =
            check_mutated(&response, MAX_BLOB_FRAME, &mutations)?
        {
            let fits = manifest_fits(&manifest);
            prop_assert_eq!(manifest.check().is_ok(), fits);
            if fits {
                prop_assert!(codec::encode(&BlobResponse::Manifest(manifest)).unwrap().len() <= MAX_BLOB_FRAME);
            }
        }
        // Where the chunk count or the byte count is: after the variant tag,
        // and after a manifest's digest, kind and total or a chunk's index.
        let at = match &response {
            BlobResponse::Manifest(_) => 4 + 32 + 4 + 8,
            BlobResponse::Chunk { .. } => 4 + 4,
            BlobResponse::NotFound => 0,
        };
        if at > 0 {
            check_announced::<BlobResponse>(&bytes, at, announced)?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Headers and blocks answering a sync request: round trip, mutations,
    /// and counts announced anywhere, under the sync frame cap.
    #[test]
    fn sync_responses_round_trip_and_mutations_are_refused_or_canonical(
        response in arb_sync_response(),
        cuts in cuts(),
        mutations in mutations(),
        at in any::<Index>(),
        announced in prop_oneof![Just(u64::MAX), (1u64 << 23)..u64::MAX, 13u64..(1 << 23)],
    ) {
        let bytes = check_valid(&response, MAX_SYNC_FRAME, &cuts)?;
        check_mutated(&response, MAX_SYNC_FRAME, &mutations)?;
        // An error's text is not a sequence: its announced length is
        // `a_sync_error_text_is_not_allocated_before_it_arrives`'s.
        if !matches!(response, SyncResponse::Error(_)) {
            check_announced::<SyncResponse>(&bytes, 4, announced)?;
            check_announced::<SyncResponse>(&bytes, at.index(bytes.len() - 7), announced)?;
        }
    }
}

/// Every decoder a peer's frame reaches, on arbitrary bytes and under the
/// caps the handlers use.
fn decode_every_message(bytes: &[u8]) -> Result<(), TestCaseError> {
    decode_checked::<SyncRequest>(bytes, MAX_SYNC_FRAME)?;
    decode_checked::<SyncResponse>(bytes, MAX_SYNC_FRAME)?;
    decode_checked::<BlobRequest>(bytes, MAX_BLOB_FRAME)?;
    if let Some(BlobResponse::Manifest(manifest)) =
        decode_checked::<BlobResponse>(bytes, MAX_BLOB_FRAME)?
    {
        prop_assert_eq!(manifest.check().is_ok(), manifest_fits(&manifest));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_frames_are_refused_or_decode_canonically(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            prop::collection::vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..600),
        ],
        max in prop_oneof![Just(MAX_SYNC_FRAME), 0usize..700],
    ) {
        let mut stream = (body.len() as u32).to_le_bytes().to_vec();
        stream.extend_from_slice(&body);
        match read_frame(&mut Cursor::new(stream), max) {
            Ok(frame) => {
                prop_assert_eq!(&frame, &body);
                decode_every_message(&frame)?;
            }
            Err(err) => {
                prop_assert!(body.len() > max);
                prop_assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            }
        }
    }
}

/// A sync error's text announced at up to the sync cap, in a frame of
/// twelve bytes, is refused without the text being allocated: bincode on
/// its own zero-fills a buffer of the announced length (up to its fixed
/// 8 MiB limit) before reading a string, so twelve bytes from a peer would
/// cost 8 MiB.
#[test]
fn a_sync_error_text_is_not_allocated_before_it_arrives() {
    for announced in [(MAX_SYNC_FRAME - 64) as u64, 1 << 20, 1 << 10] {
        // variant tag 2 (Error) | text length
        let mut frame = 2u32.to_le_bytes().to_vec();
        frame.extend_from_slice(&announced.to_le_bytes());
        let (result, largest) =
            largest_allocation(|| codec::decode_with_limit::<SyncResponse>(&frame, MAX_SYNC_FRAME));
        assert!(
            matches!(result, Err(CodecError::Malformed(_))),
            "{result:?}"
        );
        assert!(
            largest <= 64 * frame.len(),
            "{announced} announced in {} bytes: an allocation of {largest} bytes",
            frame.len()
        );
    }
}

/// Every element type a peer message collects into a sequence fits the
/// per-input-byte bound the allocation checks use.
#[test]
fn elements_fit_the_allocation_bound() {
    use std::mem::size_of;
    let sizes = [
        ("Header", size_of::<Header>()),
        ("Block", size_of::<Block>()),
        ("BlockHash", size_of::<BlockHash>()),
        ("Transaction", size_of::<Transaction>()),
        ("SegmentLeaf", size_of::<SegmentLeaf>()),
        ("Digest", size_of::<Digest>()),
    ];
    for (name, size) in sizes {
        assert!(
            size <= MEMORY_PER_INPUT_BYTE,
            "{name} is {size} bytes in memory, expected at most {MEMORY_PER_INPUT_BYTE}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// A gossiped block or transaction with a length or count announced
    /// anywhere in it is refused or canonical, and costs no allocation
    /// larger than a bounded multiple of its bytes.
    #[test]
    fn gossiped_blocks_and_transactions_do_not_allocate_what_they_announce(
        block in arb_block(),
        at in any::<Index>(),
        announced in prop_oneof![Just(u64::MAX), (1u64 << 23)..u64::MAX, 1u64..(1 << 23)],
    ) {
        let bytes = codec::encode(&block).unwrap();
        check_announced::<Block>(&bytes, at.index(bytes.len() - 7), announced)?;
        for tx in &block.txs {
            let bytes = codec::encode(tx).unwrap();
            check_announced::<Transaction>(&bytes, at.index(bytes.len() - 7), announced)?;
            if let Transaction::Signed(signed) = tx {
                let bytes = codec::encode(signed).unwrap();
                check_announced::<SignedTx>(&bytes, at.index(bytes.len() - 7), announced)?;
            }
        }
    }

    /// The whole path of a request-response message: a frame read from a
    /// peer and the message decoded from it. Whatever the frame's message
    /// announces, the largest allocation is a bounded multiple of the bytes
    /// that arrived.
    #[test]
    fn a_frame_and_its_message_cost_a_bounded_multiple_of_what_arrived(
        response in arb_sync_response(),
        blob in arb_blob_response(),
        at in any::<Index>(),
        announced in prop_oneof![Just(u64::MAX), (1u64 << 23)..u64::MAX, 1u64..(1 << 23)],
        pieces in prop::collection::vec(1usize..700, 1..4),
    ) {
        let messages = [
            (codec::encode(&response).unwrap(), MAX_SYNC_FRAME),
            (codec::encode(&blob).unwrap(), MAX_BLOB_FRAME),
        ];
        for (mut body, max) in messages {
            if body.len() >= 8 {
                let at = at.index(body.len() - 7);
                body[at..at + 8].copy_from_slice(&announced.to_le_bytes());
            }
            let stream = write_frame(&body, max).unwrap();
            let mut peer = Peer::new(stream.clone(), pieces.clone(), true);
            let (read, largest) = largest_allocation(|| {
                let frame = read_frame(&mut peer, max)?;
                // Refused or not: only what it cost is looked at here.
                let _ = codec::decode_with_limit::<SyncResponse>(&frame, max);
                let _ = codec::decode_with_limit::<BlobResponse>(&frame, max);
                Ok::<_, io::Error>(frame)
            });
            prop_assert_eq!(&read.unwrap(), &body);
            prop_assert!(
                largest <= allocation_bound(stream.len()),
                "{} announced in a frame of {} bytes: an allocation of {} bytes",
                announced,
                stream.len(),
                largest
            );
            // And what it decodes to, under every message's own checks.
            decode_every_message(&body)?;
        }
    }
}

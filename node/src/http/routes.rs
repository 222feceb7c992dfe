//! The HTTP API's routes. Each parses its path, query and body into typed
//! values first (a malformed one is a 400 naming the field), then asks the
//! chain task, the network or the blob store.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use futures::{Stream, StreamExt};
use protocol::api::{
    AddressView, BlobStored, BlockSummary, BlockView, BlocksPage, ErrorCode, HashrateSample,
    HashrateView, JobView, JobsPage, MempoolView, PeerView, PeersView, PredictRequest, Prediction,
    Predictions, StatusView, TxAccepted, TxLookup, TxPlace, TxSubmission, TxView, BLOCKS_PAGE,
    JOBS_PAGE, MAX_JOBS_PAGE, MAX_JSON_BODY_BYTES, MAX_MEMPOOL_LISTED,
};
use protocol::api::{BlockRef, ProofView, MAX_PREDICT_ROWS};
use protocol::blob::{BlobKind, BlobName};
use protocol::state::JobStatus;
use protocol::{codec, Address, BlockHash, Digest, Height, JobId, SignedTx, TxId};
use tokio::sync::{broadcast, mpsc, watch};

use super::{client_ip, explain, Answer, Failure, HttpState, STATUS_EVERY};
use crate::blobs::{BlobError, Uploader};
use crate::chain_task::{activity_height, JobCursor, JobOrder, JobStatusKind, TxFound};
use crate::metrics::{gauge_value, label, work_f64};
use crate::net::handlers::{submit_from_client, SubmitError};
use crate::observe::{unix_seconds, Event, HASHRATE_SAMPLE_SECS};

/// The dashboard page, embedded so the node serves it offline.
const DASHBOARD: &str = include_str!("dashboard.html");

/// A blob uploaded without `?digest=` is held in memory until hashed, so
/// it may be at most this long (16 MiB); name larger ones by digest and
/// they are written chunk by chunk as they arrive.
pub const MAX_UNNAMED_UPLOAD: u64 = 16 * 1024 * 1024;

/// A tip older than this (Bitcoin Core's `max-tip-age`) reads as not
/// synced: the node is catching up or its network has stopped mining.
pub const MAX_TIP_AGE_SECS: u64 = 24 * 60 * 60;

pub(super) async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

pub(super) async fn no_route(request: Request) -> Failure {
    Failure::not_found(format!(
        "no route {} {}: see the API table in the README",
        request.method(),
        request.uri().path()
    ))
}

fn octets(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
}

fn parse_hex32<T>(text: &str, field: &str, parse: impl Fn([u8; 32]) -> T) -> Answer<T> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes)
        .map_err(|_| Failure::bad(format!("{field} {text:?} is not 64 hex characters")))?;
    Ok(parse(bytes))
}

fn status_view(state: &HttpState) -> StatusView {
    let ctx = &state.ctx;
    // From the tip snapshot alone: a status costs the chain task nothing.
    let tip = ctx.chain.tip();
    let tip_time = u64::from(tip.time);
    StatusView {
        chain: ctx.params.name.to_owned(),
        chain_id: ctx.params.chain_id,
        height: tip.height.0,
        tip: tip.tip.to_string(),
        total_work: tip.total_work.to_string(),
        state_root: tip.state_root.to_string(),
        peers: u32::try_from(ctx.network.peer_count()).unwrap_or(u32::MAX),
        mempool: u32::try_from(tip.mempool).unwrap_or(u32::MAX),
        mempool_bytes: u64::try_from(tip.mempool_bytes).unwrap_or(u64::MAX),
        min_fee_rate: ctx.params.min_fee_rate.0,
        entry_charge: ctx.params.entry_charge.0,
        mining: ctx.miner.mining.load(Ordering::Relaxed),
        hashrate: ctx.miner.hashrate.load(Ordering::Relaxed),
        peer_id: ctx.peer_id.to_string(),
        synced: unix_seconds().saturating_sub(tip_time) < MAX_TIP_AGE_SECS,
        #[allow(clippy::cast_precision_loss)]
        network_hashrate: tip.network_hashrate as f64,
    }
}

pub(super) async fn status(State(state): State<HttpState>) -> Json<StatusView> {
    Json(status_view(&state))
}

#[derive(serde::Deserialize)]
pub(super) struct BlocksQuery {
    from: Option<String>,
}

pub(super) async fn blocks(
    State(state): State<HttpState>,
    Query(query): Query<BlocksQuery>,
) -> Answer<Json<BlocksPage>> {
    let from = match &query.from {
        Some(text) => Some(Height(text.trim().parse::<u64>().map_err(|_| {
            Failure::bad(format!("from {text:?} is not a height (a whole number)"))
        })?)),
        None => None,
    };
    let rows = state.ctx.chain.blocks_page(from, BLOCKS_PAGE).await?;
    let next = rows.last().and_then(|row| row.height.0.checked_sub(1));
    Ok(Json(BlocksPage {
        blocks: rows
            .into_iter()
            .map(|row| BlockSummary {
                height: row.height.0,
                hash: row.hash.to_string(),
                time: u64::from(row.time),
                txs: u32::try_from(row.txs).unwrap_or(u32::MAX),
                bytes: u64::try_from(row.bytes).unwrap_or(u64::MAX),
                miner: row.miner.to_string(),
            })
            .collect(),
        next,
    }))
}

fn block_ref(text: &str) -> Answer<BlockRef> {
    let text = text.trim();
    if !text.is_empty() && text.len() < 20 && text.bytes().all(|b| b.is_ascii_digit()) {
        let height = text
            .parse::<u64>()
            .map_err(|_| Failure::bad(format!("block {text:?} is not a height")))?;
        return Ok(BlockRef::Height(Height(height)));
    }
    text.parse::<BlockHash>().map(BlockRef::Hash).map_err(|_| {
        Failure::bad(format!(
            "block {text:?} is neither a height nor a block hash of 64 hex characters"
        ))
    })
}

async fn find_block(state: &HttpState, which: &str) -> Answer<protocol::api::BlockInfo> {
    let which = block_ref(which)?;
    state.ctx.chain.block(which).await?.ok_or_else(|| {
        Failure::not_found(match which {
            BlockRef::Height(h) => format!("no block at height {h} on the main chain"),
            BlockRef::Hash(hash) => format!("no block {hash}"),
        })
    })
}

pub(super) async fn block(
    State(state): State<HttpState>,
    Path(which): Path<String>,
) -> Answer<Json<BlockView>> {
    let info = find_block(&state, &which).await?;
    let bytes = info.block.encode().map(|b| b.len()).unwrap_or(0);
    Ok(Json(BlockView::new(
        &info.block,
        info.height.0,
        info.main_chain,
        u64::try_from(bytes).unwrap_or(u64::MAX),
    )))
}

pub(super) async fn block_raw(
    State(state): State<HttpState>,
    Path(which): Path<String>,
) -> Answer<Response> {
    let info = find_block(&state, &which).await?;
    let bytes = codec::encode(&info.block).map_err(|e| Failure::internal(e.to_string()))?;
    Ok(octets(bytes))
}

async fn find_tx(state: &HttpState, id: &str) -> Answer<crate::chain_task::TxFound> {
    let id = parse_hex32(id, "transaction id", TxId)?;
    state.ctx.chain.transaction(id).await?.ok_or_else(|| {
        Failure::not_found(format!(
            "no transaction {id} in the mempool or on the main chain"
        ))
    })
}

pub(super) async fn tx(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Answer<Json<TxLookup>> {
    let found = find_tx(&state, &id).await?;
    Ok(Json(TxLookup {
        tx: TxView::new(&found.tx),
        in_mempool: found.block.is_none(),
        block: found.block.map(|(hash, height)| TxPlace {
            hash: hash.to_string(),
            height: height.0,
        }),
    }))
}

pub(super) async fn tx_raw(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Answer<Response> {
    let found = find_tx(&state, &id).await?;
    let bytes = codec::encode(&found.tx).map_err(|e| Failure::internal(e.to_string()))?;
    Ok(octets(bytes))
}

/// Reads a body the route caps, answering 413 above the cap.
fn body_or_failure(body: Result<Bytes, BytesRejection>) -> Answer<Bytes> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Failure::new(
                ErrorCode::TooLarge,
                format!("the body is larger than {MAX_JSON_BODY_BYTES} bytes"),
            )
        } else {
            Failure::bad(format!("cannot read the body: {rejection}"))
        }
    })
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// `POST /api/tx`. Cost order: the body is capped, the hex decoded and the
/// transaction decoded under the chain's size cap here; its signature and
/// every other rule are checked by the same path gossip takes.
pub(super) async fn post_tx(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer<Json<TxAccepted>> {
    let body = body_or_failure(body)?;
    let text = if is_json(&headers) {
        serde_json::from_slice::<TxSubmission>(&body)
            .map_err(|e| Failure::bad(format!("body: expected {{\"hex\": \"…\"}}: {e}")))?
            .hex
    } else {
        String::from_utf8(body.to_vec()).map_err(|_| {
            Failure::bad("body: expected the transaction's hex, got bytes that are not text")
        })?
    };
    let bytes = hex::decode(text.trim())
        .map_err(|e| Failure::bad(format!("hex: not hexadecimal ({e})")))?;
    let tx: SignedTx = codec::decode_with_limit(&bytes, state.ctx.params.max_tx_bytes)
        .map_err(|e| Failure::bad(format!("hex: not a signed transaction: {e}")))?;
    match submit_from_client(&state.ctx, tx).await {
        Ok(id) => Ok(Json(TxAccepted {
            txid: id.to_string(),
        })),
        Err(SubmitError::Rejected(reason)) => Err(Failure::new(ErrorCode::TxRejected, reason)),
        Err(SubmitError::Stopped(err)) => Err(err.into()),
    }
}

pub(super) async fn mempool(State(state): State<HttpState>) -> Answer<Json<MempoolView>> {
    let info = state.ctx.chain.mempool_info(MAX_MEMPOOL_LISTED).await?;
    Ok(Json(MempoolView {
        count: u32::try_from(info.count).unwrap_or(u32::MAX),
        bytes: u64::try_from(info.bytes).unwrap_or(u64::MAX),
        truncated: info.count > info.ids.len(),
        txids: info.ids.iter().map(ToString::to_string).collect(),
    }))
}

#[derive(serde::Deserialize)]
pub(super) struct AddressQuery {
    proof: Option<String>,
}

pub(super) async fn address(
    State(state): State<HttpState>,
    Path(addr): Path<String>,
    Query(query): Query<AddressQuery>,
) -> Answer<Json<AddressView>> {
    let address = parse_hex32(&addr, "address", Address)?;
    let want_proof = match query.proof.as_deref().map(str::trim) {
        None | Some("false") | Some("0") => false,
        Some("") | Some("true") | Some("1") => true,
        Some(other) => {
            return Err(Failure::bad(format!(
                "proof {other:?} is not one of true, false (or ?proof alone)"
            )))
        }
    };
    if want_proof {
        // One question to the chain task: balance, nonce and proof all at
        // the same tip.
        let (proof, tip, height, root) = state.ctx.chain.account_proof(address).await?;
        let account = proof.account.unwrap_or_default();
        let next_nonce = state.ctx.chain.next_nonce(address).await?;
        return Ok(Json(AddressView {
            address: address.to_string(),
            balance: account.balance.0,
            nonce: account.nonce,
            next_nonce,
            proof: Some(ProofView::new(&proof, tip, height, root)),
        }));
    }
    let info = state.ctx.chain.balance(address).await?;
    Ok(Json(AddressView {
        address: info.address.to_string(),
        balance: info.account.balance.0,
        nonce: info.account.nonce,
        next_nonce: info.next_nonce,
        proof: None,
    }))
}

pub(super) async fn peers(State(state): State<HttpState>) -> Answer<Json<PeersView>> {
    let details = state
        .ctx
        .network
        .peer_details()
        .await
        .map_err(|e| Failure::new(ErrorCode::NotSynced, e.to_string()))?;
    Ok(Json(PeersView {
        peers: details
            .into_iter()
            .map(|d| PeerView {
                peer_id: d.peer.to_string(),
                address: d.addr.map(|a| a.to_string()).unwrap_or_default(),
                score: d.score,
            })
            .collect(),
    }))
}

#[derive(serde::Deserialize)]
pub(super) struct JobsQuery {
    status: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
    order: Option<String>,
}

pub(super) async fn jobs(
    State(state): State<HttpState>,
    Query(query): Query<JobsQuery>,
) -> Answer<Json<JobsPage>> {
    let status = match query.status.as_deref().map(str::trim) {
        None | Some("") | Some("all") => None,
        Some("open") => Some(JobStatusKind::Open),
        Some("pending") => Some(JobStatusKind::Pending),
        Some("fulfilled") => Some(JobStatusKind::Fulfilled),
        Some("expired") => Some(JobStatusKind::Expired),
        Some(other) => {
            return Err(Failure::bad(format!(
                "status {other:?} is not one of open, pending, fulfilled, expired"
            )))
        }
    };
    let order = match query.order.as_deref().map(str::trim) {
        None | Some("") | Some("id") => JobOrder::Id,
        Some("recent") => JobOrder::Recent,
        Some(other) => {
            return Err(Failure::bad(format!(
                "order {other:?} is not one of id, recent"
            )))
        }
    };
    let after = match (&query.cursor, order) {
        (None, _) => None,
        (Some(text), JobOrder::Id) => Some(JobCursor::Id(parse_hex32(text, "cursor", JobId)?)),
        (Some(text), JobOrder::Recent) => {
            let (height, id) = text
                .split_once('.')
                .and_then(|(h, id)| h.parse::<u64>().ok().map(|h| (h, id)))
                .ok_or_else(|| {
                    Failure::bad(format!(
                        "cursor {text:?} is not HEIGHT.JOBID, as next_cursor gives in order=recent"
                    ))
                })?;
            Some(JobCursor::Recent(height, parse_hex32(id, "cursor", JobId)?))
        }
    };
    let limit = match &query.limit {
        Some(text) => text
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_JOBS_PAGE).contains(n))
            .ok_or_else(|| {
                Failure::bad(format!(
                    "limit {text:?} is not a number from 1 to {MAX_JOBS_PAGE}"
                ))
            })?,
        None => JOBS_PAGE,
    };
    // One more than asked says whether a next page exists.
    let mut page = state
        .ctx
        .chain
        .jobs_page(status, order, after, limit.saturating_add(1))
        .await?;
    let more = page.len() > limit;
    page.truncate(limit);
    let next_cursor = match (more, order, page.last()) {
        (true, JobOrder::Id, Some((id, _))) => Some(id.to_string()),
        (true, JobOrder::Recent, Some((id, job))) => Some(format!("{}.{id}", activity_height(job))),
        _ => None,
    };
    Ok(Json(JobsPage {
        jobs: page.iter().map(|(id, job)| JobView::new(id, job)).collect(),
        next_cursor,
    }))
}

async fn find_job(state: &HttpState, id: &str) -> Answer<(JobId, protocol::JobRecord)> {
    let id = parse_hex32(id, "job id", JobId)?;
    if let Some(job) = state.ctx.chain.job(id).await? {
        return Ok((id, job));
    }
    // A job's id is its post's transaction id: a post on the main chain
    // whose job is gone settled and was pruned from the live state.
    let posted = match state.ctx.chain.transaction(TxId(id.0)).await? {
        Some(TxFound {
            tx: protocol::Transaction::Signed(signed),
            block: Some((_, height)),
        }) if matches!(signed.body.kind, protocol::TxKind::PostJob { .. }) => Some(height),
        _ => None,
    };
    Err(Failure::not_found(match posted {
        Some(height) => format!(
            "job {id} (posted at height {height}) settled and was pruned from the live state \
             {} blocks later; its history is in the blocks (GET /api/tx/{id})",
            state.ctx.params.job_retention
        ),
        None => format!("no job {id}"),
    }))
}

pub(super) async fn job(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Answer<Json<JobView>> {
    let (id, record) = find_job(&state, &id).await?;
    let mut view = JobView::new(&id, &record);
    // The committed loss curve travels in the result's transaction.
    let result_tx = match &record.status {
        JobStatus::Pending { tx, .. } | JobStatus::Fulfilled { tx, .. } => Some(*tx),
        _ => None,
    };
    if let Some(tx) = result_tx {
        if let Ok(Some(found)) = state.ctx.chain.transaction(tx).await {
            view.loss_curve = TxView::new(&found.tx).loss_curve;
        }
    }
    let audit = state.observer.audit_of(&id).filter(|audit| {
        result_tx.is_some_and(|tx| audit.tx.as_deref() == Some(tx.to_string().as_str()))
    });
    let rejections = state.observer.rejections_of(&id);
    let height = state.ctx.chain.tip().height;
    view.explanation = Some(explain::explain(
        &record,
        height,
        audit.as_ref(),
        &rejections,
    ));
    view.audit = Some(audit.unwrap_or_else(|| protocol::api::AuditView {
        state: "not_audited".into(),
        ..Default::default()
    }));
    view.rejections = Some(rejections);
    Ok(Json(view))
}

pub(super) async fn job_raw(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Answer<Response> {
    let (_, record) = find_job(&state, &id).await?;
    let bytes = codec::encode(&record).map_err(|e| Failure::internal(e.to_string()))?;
    Ok(octets(bytes))
}

#[derive(serde::Deserialize)]
pub(super) struct BlobQuery {
    kind: Option<String>,
    digest: Option<String>,
    by: Option<String>,
}

fn blob_failure(err: BlobError) -> Failure {
    let code = match &err {
        BlobError::Quota(_) => ErrorCode::QuotaExceeded,
        BlobError::TooLarge { .. } => ErrorCode::TooLarge,
        BlobError::Database(_) => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    };
    Failure::new(code, err.to_string())
}

fn join_failure(err: tokio::task::JoinError) -> Failure {
    Failure::internal(format!("a blob task failed: {err}"))
}

/// `POST /api/blobs?kind=…[&digest=…]`. Cost order: kind and digest
/// parsed, the declared length checked against the kind's cap (413), the
/// client's quota charged for it (429), then the body is read chunk by
/// chunk (named uploads are written as they arrive; unnamed ones, at most
/// [`MAX_UNNAMED_UPLOAD`], are held and hashed) and the whole checked.
pub(super) async fn post_blob(
    State(state): State<HttpState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Query(query): Query<BlobQuery>,
    headers: HeaderMap,
    body: Body,
) -> Answer<Json<BlobStored>> {
    let kind = match query.kind.as_deref().map(str::trim) {
        Some("dataset") => BlobKind::Dataset,
        Some("weights") => BlobKind::Weights,
        Some("state") => BlobKind::State,
        other => {
            return Err(Failure::bad(format!(
                "kind {:?} is not one of dataset, weights, state",
                other.unwrap_or("")
            )))
        }
    };
    let digest = match &query.digest {
        Some(text) => Some(parse_hex32(text, "digest", Digest)?),
        None => None,
    };
    let total = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| {
            Failure::new(
                ErrorCode::BadRequest,
                "Content-Length: missing or not a number; a blob upload must declare its length",
            )
        })?;
    let max = kind.max_bytes();
    if total > max {
        return Err(Failure::new(
            ErrorCode::TooLarge,
            format!("a {kind:?} blob of {total} bytes, expected at most {max}"),
        ));
    }
    if digest.is_none() && total > MAX_UNNAMED_UPLOAD {
        return Err(Failure::bad(format!(
            "a blob of {total} bytes without ?digest=: name blobs over {MAX_UNNAMED_UPLOAD} bytes by their SHA-256"
        )));
    }
    let store = state.ctx.blobs.clone();
    let client = client_ip(Some(client));
    let mut stream = body.into_data_stream();
    let stored = match digest {
        None => {
            let _reservation = store
                .reserve(Uploader::Client(client), total)
                .map_err(|e| blob_failure(BlobError::Quota(e)))?;
            let mut bytes = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
            while let Some(frame) = stream.next().await {
                let frame = frame.map_err(|e| Failure::bad(format!("body: {e}")))?;
                if u64::try_from(bytes.len().saturating_add(frame.len())).unwrap_or(u64::MAX)
                    > total
                {
                    return Err(Failure::bad(format!(
                        "the body is longer than its Content-Length {total}"
                    )));
                }
                bytes.extend_from_slice(&frame);
            }
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.put(kind, &bytes))
                .await
                .map_err(join_failure)?
                .map_err(blob_failure)?
        }
        Some(digest) => {
            let begin = {
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.begin_upload(client, digest, kind, total))
                    .await
                    .map_err(join_failure)?
                    .map_err(blob_failure)?
            };
            match begin {
                // Held already: the body need not be read, nothing is charged.
                None => digest,
                Some(writer) => write_streamed(writer, &mut stream, total).await?,
            }
        }
    };
    tracing::info!(blob = %stored, ?kind, bytes = total, "blob stored");
    Ok(Json(BlobStored {
        digest: stored.to_string(),
        bytes: total,
    }))
}

/// Writes a named upload's body chunk by chunk as it arrives, then checks
/// the whole; any failure deletes what was written.
async fn write_streamed(
    mut writer: crate::blobs::BlobWriter,
    stream: &mut axum::body::BodyDataStream,
    total: u64,
) -> Answer<Digest> {
    let chunk = usize::try_from(protocol::blob::BLOB_CHUNK_BYTES).unwrap_or(1 << 20);
    let mut pending: Vec<u8> = Vec::with_capacity(chunk);
    let mut received = 0u64;
    loop {
        let frame = match stream.next().await {
            Some(Ok(frame)) => Some(frame),
            Some(Err(e)) => {
                writer.abort();
                return Err(Failure::bad(format!("body: {e}")));
            }
            None => None,
        };
        let done = frame.is_none();
        if let Some(frame) = frame {
            received = received.saturating_add(u64::try_from(frame.len()).unwrap_or(u64::MAX));
            if received > total {
                writer.abort();
                return Err(Failure::bad(format!(
                    "the body is longer than its Content-Length {total}"
                )));
            }
            pending.extend_from_slice(&frame);
        }
        while pending.len() >= chunk || (done && !pending.is_empty()) {
            let take = pending.len().min(chunk);
            let piece: Vec<u8> = pending.drain(..take).collect();
            let (back, outcome) = tokio::task::spawn_blocking(move || {
                let outcome = writer.write_chunk(&piece, None);
                (writer, outcome)
            })
            .await
            .map_err(join_failure)?;
            writer = back;
            if let Err(err) = outcome {
                writer.abort();
                return Err(blob_failure(err));
            }
        }
        if done {
            break;
        }
    }
    tokio::task::spawn_blocking(move || writer.finish())
        .await
        .map_err(join_failure)?
        .map_err(blob_failure)
}

/// `GET /api/blobs/{digest}[?by=weights]`: a held blob, streamed chunk by
/// chunk (each checked against its hash as it is read). Blobs not held are
/// not fetched from peers for an open read: that download would be free
/// for the client and not for this node.
pub(super) async fn get_blob(
    State(state): State<HttpState>,
    Path(digest): Path<String>,
    Query(query): Query<BlobQuery>,
) -> Answer<Response> {
    let named = parse_hex32(&digest, "digest", Digest)?;
    let name = match query.by.as_deref().map(str::trim) {
        None | Some("") | Some("content") => BlobName::Content(named),
        Some("weights") => BlobName::Weights(named),
        Some(other) => {
            return Err(Failure::bad(format!(
                "by {other:?} is not one of content, weights"
            )))
        }
    };
    let store = state.ctx.blobs.clone();
    let (tx, rx) = mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let (total_tx, total_rx) = tokio::sync::oneshot::channel::<Option<u64>>();
    tokio::task::spawn_blocking(move || {
        let digest = match store.resolve(name) {
            Ok(Some(digest)) => digest,
            _ => {
                let _ = total_tx.send(None);
                return;
            }
        };
        let chunks = match store.chunks(&digest) {
            Ok(Some(chunks)) => chunks,
            _ => {
                let _ = total_tx.send(None);
                return;
            }
        };
        let _ = total_tx.send(Some(chunks.total()));
        for chunk in chunks {
            let item = chunk.map_err(|e| std::io::Error::other(e.to_string()));
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    let Ok(Some(total)) = total_rx.await else {
        return Err(Failure::not_found(format!(
            "blob {named} is not held by this node"
        )));
    };
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, total.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// `POST /api/jobs/{id}/predict`. Cost order: body capped and parsed, rows
/// counted and sized against the dataset, weights read from the local
/// store (fetched from peers only for an authorised client), then the
/// model runs on a blocking thread.
pub(super) async fn predict(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<Json<Predictions>> {
    let body = body_or_failure(body)?;
    let request: PredictRequest = serde_json::from_slice(&body)
        .map_err(|e| Failure::bad(format!("body: expected {{\"rows\": [[numbers]]}}: {e}")))?;
    let rows = request.rows;
    if rows.is_empty() || rows.len() > MAX_PREDICT_ROWS {
        return Err(Failure::bad(format!(
            "rows: {} input rows, expected 1..={MAX_PREDICT_ROWS}",
            rows.len()
        )));
    }
    let (job, record) = find_job(&state, &id).await?;
    let result = match record.status {
        JobStatus::Fulfilled { result, .. } | JobStatus::Pending { result, .. } => result,
        other => {
            return Err(Failure::bad(format!(
                "job {job} is {}, expected pending or fulfilled",
                protocol::api::status_word(&other)
            )))
        }
    };
    let features = usize::try_from(record.spec.dataset.features).unwrap_or(usize::MAX);
    if let Some((index, row)) = rows.iter().enumerate().find(|(_, r)| r.len() != features) {
        return Err(Failure::bad(format!(
            "rows[{index}] has {} values, expected {features} (the dataset's feature count)",
            row.len()
        )));
    }
    if let Some((index, _)) = rows
        .iter()
        .enumerate()
        .find(|(_, r)| r.iter().any(|v| !v.is_finite()))
    {
        return Err(Failure::bad(format!(
            "rows[{index}] holds a value that is not finite"
        )));
    }
    let file = crate::net::blob_fetch::fetch(
        &state.ctx.blobs,
        &state.ctx.network,
        BlobName::Weights(result.weights),
    )
    .await
    .map_err(|err| {
        Failure::not_found(format!("the weights of job {job} are not available: {err}"))
    })?;
    let store = state.ctx.blobs.clone();
    let predictions = tokio::task::spawn_blocking(move || -> Result<Vec<Prediction>, String> {
        let bytes = store
            .get(&file)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("weights file {file} vanished"))?;
        let model = trainer::weights::model_from_safetensors(&bytes).map_err(|e| e.to_string())?;
        let inputs: Vec<f32> = rows.iter().flatten().copied().collect();
        let predictions = trainer::predict(&model, &inputs).map_err(|e| e.to_string())?;
        Ok(predictions
            .into_iter()
            .map(|p| match p {
                trainer::Prediction::Class {
                    class,
                    probabilities,
                } => Prediction {
                    class: Some(class),
                    probabilities: Some(probabilities),
                    value: None,
                },
                trainer::Prediction::Value { value } => Prediction {
                    class: None,
                    probabilities: None,
                    value: Some(value),
                },
            })
            .collect())
    })
    .await
    .map_err(|e| Failure::internal(e.to_string()))?
    .map_err(Failure::bad)?;
    Ok(Json(Predictions { predictions }))
}

pub(super) async fn hashrate(State(state): State<HttpState>) -> Json<HashrateView> {
    Json(HashrateView {
        samples: state.observer.hashrate_samples(),
    })
}

/// `GET /api/events`. The stream holds only a broadcast receiver: when the
/// client goes, axum drops the stream and with it the subscription; no
/// task is left behind.
pub(super) async fn events(
    State(state): State<HttpState>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let receiver = state.observer.subscribe();
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        let sse = match receiver.recv().await {
            Ok(event) => SseEvent::default().event(event.name()).data(event.data()),
            Err(broadcast::error::RecvError::Lagged(missed)) => SseEvent::default()
                .event("lagged")
                .data(format!("{{\"missed\":{missed}}}")),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(sse), receiver))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// `GET /metrics`: the gauges of the current state are read now, then the
/// whole registry (the node's and libp2p's) is encoded.
pub(super) async fn metrics(State(state): State<HttpState>) -> Answer<Response> {
    let m = &state.observer.metrics;
    let tip = state.ctx.chain.tip();
    m.height.set(gauge_value(tip.height.0));
    m.total_work.set(work_f64(&tip.total_work));
    m.peers.set(gauge_value(
        u64::try_from(state.ctx.network.peer_count()).unwrap_or(u64::MAX),
    ));
    m.mempool_transactions
        .set(gauge_value(u64::try_from(tip.mempool).unwrap_or(u64::MAX)));
    m.mempool_bytes.set(gauge_value(
        u64::try_from(tip.mempool_bytes).unwrap_or(u64::MAX),
    ));
    m.hashrate.set(gauge_value(
        state.ctx.miner.hashrate.load(Ordering::Relaxed),
    ));
    m.event_subscribers.set(gauge_value(
        u64::try_from(state.observer.subscribers()).unwrap_or(u64::MAX),
    ));
    let counts = state.ctx.chain.job_counts().await?;
    for (status, count) in ["open", "pending", "fulfilled", "expired"]
        .iter()
        .zip(counts)
    {
        m.jobs
            .get_or_create(&label("status", status))
            .set(gauge_value(count));
    }
    let blobs = state.ctx.blobs.clone();
    let held = tokio::task::spawn_blocking(move || blobs.held_bytes())
        .await
        .map_err(join_failure)?
        .map_err(blob_failure)?;
    m.blob_store_bytes.set(gauge_value(held));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &state.registry)
        .map_err(|e| Failure::internal(format!("cannot encode metrics: {e}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Samples the hash rate every [`HASHRATE_SAMPLE_SECS`] and, while anyone
/// listens to `/api/events`, publishes the status every
/// [`STATUS_EVERY`].
pub(super) async fn run_ticker(state: HttpState, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(STATUS_EVERY);
    let mut last_sample = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => {}
        }
        let now = unix_seconds();
        if now.saturating_sub(last_sample) >= HASHRATE_SAMPLE_SECS {
            last_sample = now;
            let network_hashrate = state.ctx.chain.network_hashrate().await.unwrap_or(0.0);
            state.observer.sample_hashrate(HashrateSample {
                time: now,
                height: state.ctx.chain.tip().height.0,
                hashrate: state.ctx.miner.hashrate.load(Ordering::Relaxed),
                network_hashrate,
            });
        }
        if state.observer.subscribers() > 0 {
            let status = status_view(&state);
            state.observer.publish(Event::Status(Box::new(status)));
        }
    }
}

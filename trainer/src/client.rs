//! The HTTP client of a node's API: the one way both CLIs (the trainer's
//! network commands and `gradchain-node rpc …`) and the tests reach a node.
//!
//! Blocking and plain HTTP/1.1 ([`ureq`]), so that the trainer needs no
//! async runtime. Each method is one route of the API and answers the
//! route's JSON body as its [`protocol::api`] type, or, for the `/raw`
//! routes, the chain value decoded from its canonical bytes. An error answer
//! (`{"error": {"code", "message"}}`) becomes [`ClientError::Api`] with the
//! node's code and words; anything the client cannot make sense of becomes
//! [`ClientError::Malformed`]. This module moves and checks bytes; it never
//! decides whether a chain value is valid.

use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::api::{
    AddressView, BlobStored, BlockView, BlocksPage, ErrorBody, ErrorCode, JobView, JobsPage,
    MempoolView, PeersView, PredictRequest, Predictions, StatusView, TxAccepted, TxLookup,
    TxSubmission, DEFAULT_HTTP_PORT,
};
use protocol::blob::{BlobKind, MAX_BLOB_BYTES, MAX_WEIGHTS_BYTES};
use protocol::{Address, Block, Digest, JobId, JobRecord, SignedTx, Transaction, TxId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use ureq::http::Response;
use ureq::Body;

/// The node URL clients use when neither `--node` nor [`NODE_ENV`] names one.
pub const DEFAULT_NODE_URL: &str = "http://127.0.0.1:9701";

/// The environment variable naming the node's URL.
pub const NODE_ENV: &str = "GRADCHAIN_NODE";

/// The environment variable naming the file holding the node's HTTP token.
pub const TOKEN_FILE_ENV: &str = "GRADCHAIN_HTTP_TOKEN_FILE";

/// How long a call may take unless [`NodeClient::with_timeout`] says
/// otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest wait for a TCP connection, whatever the call's timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest JSON answer read: a full block's view or a page of jobs is a
/// few MiB.
const MAX_JSON_ANSWER_BYTES: u64 = 32 * 1024 * 1024;

/// The largest `/raw` answer read: no block, transaction or job record
/// decodes from more than the codec's limit.
const MAX_RAW_ANSWER_BYTES: usize = protocol::codec::MAX_DECODE_BYTES;

/// Uploads above this size ask the node with `Expect: 100-continue` first,
/// so that a refusal (too large, over quota, no token) or a blob the node
/// holds already is answered before the body is sent.
const EXPECT_CONTINUE_ABOVE: usize = 64 * 1024;

/// The largest token file read.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// The most pages [`NodeClient::all_jobs`] follows before deciding that the
/// node's cursors do not end.
const MAX_JOB_PAGES: usize = 100_000;

/// Why a call to a node failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node URL is not `http://HOST:PORT`.
    #[error("node URL {url:?} is not usable: {reason}; expected http://HOST:PORT, such as {DEFAULT_NODE_URL}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An argument cannot be put into a request.
    #[error("{what} {value:?} is not valid: expected {expected}")]
    BadArgument {
        /// What the argument is.
        what: &'static str,
        /// The value given.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// The token file cannot be used.
    #[error("HTTP token file {}: {reason}", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No connection, or it broke or stalled before the answer was read.
    #[error("cannot reach node at {url}: {reason}")]
    Unreachable {
        /// The node's URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The node answered with an error.
    #[error("node refused: {}: {message}", code_name(*.code))]
    Api {
        /// The HTTP status.
        status: u16,
        /// The node's error code.
        code: ErrorCode,
        /// The node's message.
        message: String,
    },
    /// The answer is not what the route answers.
    #[error("unusable answer from {url}: {reason}")]
    Malformed {
        /// The URL asked.
        url: String,
        /// What is wrong with the answer.
        reason: String,
    },
}

impl ClientError {
    /// The node's error code, when the node refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The code as it is spelled on the wire.
pub fn code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BadRequest => "bad_request",
        ErrorCode::Unauthorized => "unauthorized",
        ErrorCode::NotFound => "not_found",
        ErrorCode::TxRejected => "tx_rejected",
        ErrorCode::TooLarge => "too_large",
        ErrorCode::QuotaExceeded => "quota_exceeded",
        ErrorCode::Internal => "internal",
        ErrorCode::NotSynced => "not_synced",
    }
}

/// Which jobs `/api/jobs` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobFilter {
    /// Waiting for a result.
    Open,
    /// A result inside its challenge window.
    Pending,
    /// Paid.
    Fulfilled,
    /// Expired unanswered.
    Expired,
}

impl JobFilter {
    /// The `status` query value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Pending => "pending",
            Self::Fulfilled => "fulfilled",
            Self::Expired => "expired",
        }
    }
}

/// The node flags both CLIs share.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct NodeArgs {
    /// The node's HTTP API [default: $GRADCHAIN_NODE, else
    /// http://127.0.0.1:9701].
    #[arg(long, value_name = "URL")]
    pub node: Option<String>,
    /// File holding the bearer token of the node's write routes
    /// [default: $GRADCHAIN_HTTP_TOKEN_FILE].
    #[arg(long, value_name = "FILE")]
    pub http_token_file: Option<PathBuf>,
}

impl NodeArgs {
    /// The node URL: the flag, else [`NODE_ENV`], else [`DEFAULT_NODE_URL`].
    pub fn url(&self) -> String {
        resolve_url(
            self.node.as_deref(),
            std::env::var(NODE_ENV).ok().as_deref(),
        )
    }

    /// The token file: the flag, else [`TOKEN_FILE_ENV`].
    pub fn token_file(&self) -> Option<PathBuf> {
        self.http_token_file.clone().or_else(|| {
            std::env::var_os(TOKEN_FILE_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
    }

    /// A client for the node these flags name, with its token if a token
    /// file is named.
    pub fn client(&self) -> Result<NodeClient, ClientError> {
        let token = self.token_file().map(|p| read_token_file(&p)).transpose()?;
        Ok(NodeClient::new(&self.url())?.with_token(token))
    }
}

/// The node URL from a flag, else an environment value, else the default;
/// empty values count as absent.
pub fn resolve_url(flag: Option<&str>, env: Option<&str>) -> String {
    flag.filter(|s| !s.trim().is_empty())
        .or(env.filter(|s| !s.trim().is_empty()))
        .unwrap_or(DEFAULT_NODE_URL)
        .trim()
        .to_string()
}

/// Reads a token file: its whole content, trimmed, which must not be empty.
pub fn read_token_file(path: &Path) -> Result<String, ClientError> {
    let failed = |reason: String| ClientError::TokenFile {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| failed(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_TOKEN_FILE_BYTES.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| failed(e.to_string()))?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_TOKEN_FILE_BYTES {
        return Err(failed(format!(
            "larger than {MAX_TOKEN_FILE_BYTES} bytes, expected one token"
        )));
    }
    let text = String::from_utf8(bytes).map_err(|_| failed("not UTF-8 text".into()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(failed("empty, expected a token".into()));
    }
    if token.chars().any(|c| c.is_control()) {
        return Err(failed(
            "holds control characters, expected one token on one line".into(),
        ));
    }
    Ok(token.to_string())
}

/// Parses `http://HOST[:PORT][/]` into `http://HOST:PORT`.
fn normalize_url(url: &str) -> Result<String, ClientError> {
    let bad = |reason: &str| ClientError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let text = url.trim();
    let rest = match text.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) => {
            return Err(bad(&format!(
                "scheme {scheme:?} is not supported, only http"
            )))
        }
        None if text.starts_with('/') => {
            return Err(bad("a multiaddr is a p2p address, not the HTTP API's"))
        }
        None => return Err(bad("no http:// scheme")),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    if authority.contains(['/', '?', '#', '@']) || authority.chars().any(char::is_whitespace) {
        return Err(bad("only a host and a port may follow http://"));
    }
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let (ip, after) = inner
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 address without its closing ]"))?;
        ip.parse::<std::net::Ipv6Addr>()
            .map_err(|_| bad(&format!("{ip:?} is not an IPv6 address")))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| bad("text after the IPv6 address"))?,
            ),
        };
        (format!("[{ip}]"), port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err(bad("an IPv6 address must be in brackets, like [::1]"))
            }
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if !host.starts_with('[')
        && host.parse::<IpAddr>().is_err()
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err(bad(&format!("{host:?} is not a host name")));
    }
    let port = match port {
        None => DEFAULT_HTTP_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => return Err(bad(&format!("port {p:?} is not a number from 1 to 65535"))),
        },
    };
    Ok(format!("http://{host}:{port}"))
}

/// Checks that `text` is 64 hex characters (an id or digest in a path).
fn check_hex32(what: &'static str, text: &str) -> Result<(), ClientError> {
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(ClientError::BadArgument {
            what,
            value: text.to_string(),
            expected: "64 hex characters",
        })
    }
}

/// A node's HTTP API.
#[derive(Clone, Debug)]
pub struct NodeClient {
    base: String,
    token: Option<String>,
    timeout: Duration,
    agent: ureq::Agent,
}

impl NodeClient {
    /// A client of the node at `url` (`http://HOST:PORT`; the port defaults
    /// to 9701).
    pub fn new(url: &str) -> Result<Self, ClientError> {
        let base = normalize_url(url)?;
        Ok(Self {
            agent: agent(DEFAULT_TIMEOUT),
            base,
            token: None,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Sends `Authorization: Bearer <token>`, which the node's write routes
    /// require when it serves beyond loopback.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        self
    }

    /// How long one call may take; a blob transfer may take longer as long
    /// as no read or write stalls for this long.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self.agent = agent(timeout);
        self
    }

    /// The node's URL, `http://HOST:PORT`.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// `GET /api/status`.
    pub fn status(&self) -> Result<StatusView, ClientError> {
        self.get_json("/api/status")
    }

    /// `GET /api/blocks[?from=H]`: up to ten main-chain blocks, newest first.
    pub fn blocks(&self, from: Option<u64>) -> Result<BlocksPage, ClientError> {
        match from {
            Some(h) => self.get_json(&format!("/api/blocks?from={h}")),
            None => self.get_json("/api/blocks"),
        }
    }

    /// `GET /api/block/{ref}`: `which` is a height or a block hash.
    pub fn block(&self, which: &str) -> Result<BlockView, ClientError> {
        let which = block_ref(which)?;
        self.get_json(&format!("/api/block/{which}"))
    }

    /// `GET /api/block/{ref}/raw`: the block itself.
    pub fn block_raw(&self, which: &str) -> Result<Block, ClientError> {
        let which = block_ref(which)?;
        self.get_raw(&format!("/api/block/{which}/raw"))
    }

    /// `GET /api/tx/{id}`.
    pub fn tx(&self, id: &TxId) -> Result<TxLookup, ClientError> {
        self.get_json(&format!("/api/tx/{id}"))
    }

    /// `GET /api/tx/{id}/raw`: the transaction itself.
    pub fn tx_raw(&self, id: &TxId) -> Result<Transaction, ClientError> {
        self.get_raw(&format!("/api/tx/{id}/raw"))
    }

    /// `GET /api/mempool`.
    pub fn mempool(&self) -> Result<MempoolView, ClientError> {
        self.get_json("/api/mempool")
    }

    /// `GET /api/address/{addr}`.
    pub fn address(&self, address: &Address) -> Result<AddressView, ClientError> {
        self.get_json(&format!("/api/address/{address}"))
    }

    /// `GET /api/peers`.
    pub fn peers(&self) -> Result<PeersView, ClientError> {
        self.get_json("/api/peers")
    }

    /// `GET /api/jobs`: one page of jobs in id order after `cursor`.
    pub fn jobs(
        &self,
        status: Option<JobFilter>,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<JobsPage, ClientError> {
        let mut query = Vec::new();
        if let Some(status) = status {
            query.push(format!("status={}", status.as_str()));
        }
        if let Some(cursor) = cursor {
            check_hex32("job cursor", cursor)?;
            query.push(format!("cursor={cursor}"));
        }
        if let Some(limit) = limit {
            query.push(format!("limit={limit}"));
        }
        let path = if query.is_empty() {
            "/api/jobs".to_string()
        } else {
            format!("/api/jobs?{}", query.join("&"))
        };
        self.get_json(&path)
    }

    /// Every job with `status` (every job when `None`), following the
    /// pages' cursors to the last.
    pub fn all_jobs(&self, status: Option<JobFilter>) -> Result<Vec<JobView>, ClientError> {
        let mut jobs = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_JOB_PAGES {
            let page = self.jobs(status, cursor.as_deref(), None)?;
            jobs.extend(page.jobs);
            match page.next_cursor {
                None => return Ok(jobs),
                Some(next) => {
                    // Pages run in id order: a cursor that does not move
                    // forward would loop for ever.
                    if cursor.as_deref().is_some_and(|c| next.as_str() <= c) {
                        return Err(self.malformed(
                            "/api/jobs",
                            format!(
                                "next_cursor {next} does not come after cursor {}",
                                cursor.as_deref().unwrap_or_default()
                            ),
                        ));
                    }
                    check_hex32("next_cursor", &next)
                        .map_err(|e| self.malformed("/api/jobs", e.to_string()))?;
                    cursor = Some(next);
                }
            }
        }
        Err(self.malformed(
            "/api/jobs",
            format!("more than {MAX_JOB_PAGES} pages of jobs"),
        ))
    }

    /// `GET /api/jobs/{id}`: the job with its loss curve, audit, rejections
    /// and explanation.
    pub fn job(&self, id: &JobId) -> Result<JobView, ClientError> {
        self.get_json(&format!("/api/jobs/{id}"))
    }

    /// `GET /api/jobs/{id}/raw`: the job's record as the chain holds it;
    /// `None` when the node knows no such job.
    pub fn job_record(&self, id: &JobId) -> Result<Option<JobRecord>, ClientError> {
        match self.get_raw(&format!("/api/jobs/{id}/raw")) {
            Ok(record) => Ok(Some(record)),
            Err(ClientError::Api {
                code: ErrorCode::NotFound,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /api/tx`: submits a signed transaction to the mempool and
    /// returns its id, checked against the transaction's own.
    pub fn submit_tx(&self, tx: &SignedTx) -> Result<TxId, ClientError> {
        let bytes = protocol::codec::encode(tx).map_err(|e| ClientError::BadArgument {
            what: "transaction",
            value: e.to_string(),
            expected: "a transaction the codec encodes",
        })?;
        let expected = tx.id().map_err(|e| ClientError::BadArgument {
            what: "transaction",
            value: e.to_string(),
            expected: "a transaction the codec encodes",
        })?;
        let accepted: TxAccepted = self.post_json(
            "/api/tx",
            &TxSubmission {
                hex: hex::encode(bytes),
            },
        )?;
        let id = accepted
            .txid
            .parse::<TxId>()
            .map_err(|e| self.malformed("/api/tx", e.to_string()))?;
        if id != expected {
            return Err(self.malformed(
                "/api/tx",
                format!("accepted transaction {id}, expected {expected}"),
            ));
        }
        Ok(id)
    }

    /// `POST /api/blobs?kind=…&digest=…`: stores `bytes` as a blob of
    /// `kind`, named by their SHA-256 (which lets the node write them as
    /// they arrive and skip a blob it holds), and returns the digest the
    /// node answers, checked to be that SHA-256.
    pub fn put_blob(&self, kind: BlobKind, bytes: &[u8]) -> Result<Digest, ClientError> {
        let kind_name = match kind {
            BlobKind::Dataset => "dataset",
            BlobKind::Weights => "weights",
            BlobKind::State => "state",
        };
        let expected = Digest(protocol::sha256(bytes));
        let path = format!("/api/blobs?kind={kind_name}&digest={expected}");
        let mut request = self
            .agent
            .post(self.full(&path))
            .content_type("application/octet-stream");
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        if bytes.len() > EXPECT_CONTINUE_ABOVE {
            request = request.header("Expect", "100-continue");
        }
        let response = request.send(bytes).map_err(|e| self.transport(&path, e))?;
        let stored: BlobStored = self.json_answer(&path, response)?;
        let digest = stored
            .digest
            .parse::<Digest>()
            .map_err(|e| self.malformed(&path, e.to_string()))?;
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if digest != expected || stored.bytes != len {
            return Err(self.malformed(
                &path,
                format!(
                    "stored {} bytes as {digest}, expected {len} bytes as {expected}",
                    stored.bytes
                ),
            ));
        }
        Ok(digest)
    }

    /// `GET /api/blobs/{digest}`: a blob's bytes, checked against the
    /// digest.
    pub fn get_blob(&self, digest: &Digest) -> Result<Vec<u8>, ClientError> {
        let path = format!("/api/blobs/{digest}");
        let bytes = self.get_bytes(&path, MAX_BLOB_BYTES, true)?;
        let got = Digest(protocol::sha256(&bytes));
        if got != *digest {
            return Err(self.malformed(&path, format!("blob bytes hash to {got}")));
        }
        Ok(bytes)
    }

    /// `GET /api/blobs/{digest}?by=weights`: the weights file holding the
    /// weights with tensor digest `weights` (a job result's), checked by
    /// recomputing that digest from the file.
    pub fn get_weights(&self, weights: &Digest) -> Result<Vec<u8>, ClientError> {
        let path = format!("/api/blobs/{weights}?by=weights");
        let bytes = self.get_bytes(&path, MAX_WEIGHTS_BYTES, true)?;
        match crate::weights::tensor_digest_of_file(&bytes) {
            Ok(got) if got == *weights => Ok(bytes),
            Ok(got) => Err(self.malformed(&path, format!("weights with tensor digest {got}"))),
            Err(e) => Err(self.malformed(&path, format!("not a weights file: {e}"))),
        }
    }

    /// `POST /api/jobs/{id}/predict`: predictions of a fulfilled job's model
    /// for raw input rows.
    pub fn predict(&self, job: &JobId, rows: Vec<Vec<f32>>) -> Result<Predictions, ClientError> {
        self.post_json(
            &format!("/api/jobs/{job}/predict"),
            &PredictRequest { rows },
        )
    }

    /// `GET` of any route answering JSON, such as one a typed method does
    /// not cover or a path made wrong on purpose.
    pub fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let response = self.get(path)?;
        self.json_answer(path, response)
    }

    /// `POST` of `body` with `content_type` to any route answering JSON.
    pub fn post_body<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<T, ClientError> {
        let mut request = self
            .agent
            .post(self.full(path))
            .config()
            .timeout_global(Some(self.timeout))
            .build()
            .content_type(content_type);
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let response = request.send(body).map_err(|e| self.transport(path, e))?;
        self.json_answer(path, response)
    }

    fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::BadArgument {
            what: "request body",
            value: e.to_string(),
            expected: "a value serde_json writes",
        })?;
        self.post_body(path, "application/json", &body)
    }

    fn get(&self, path: &str) -> Result<Response<Body>, ClientError> {
        self.get_with(path, Some(self.timeout))
    }

    fn get_with(
        &self,
        path: &str,
        global: Option<Duration>,
    ) -> Result<Response<Body>, ClientError> {
        let mut request = self
            .agent
            .get(self.full(path))
            .config()
            .timeout_global(global)
            .build();
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        request.call().map_err(|e| self.transport(path, e))
    }

    fn get_raw<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let bytes = self.get_bytes(path, MAX_RAW_ANSWER_BYTES, false)?;
        protocol::codec::decode_with_limit(&bytes, MAX_RAW_ANSWER_BYTES)
            .map_err(|e| self.malformed(path, format!("canonical bytes do not decode: {e}")))
    }

    /// The body of a `GET`, at most `max` bytes; `long` lifts the call's
    /// total timeout (a large blob), leaving the per-read one.
    fn get_bytes(&self, path: &str, max: usize, long: bool) -> Result<Vec<u8>, ClientError> {
        let global = if long { None } else { Some(self.timeout) };
        let mut response = self.get_with(path, global)?;
        let status = response.status().as_u16();
        if !response.status().is_success() {
            return Err(self.error_answer(path, status, response));
        }
        let max = u64::try_from(max).unwrap_or(u64::MAX);
        if let Some(len) = response.body().content_length() {
            if len > max {
                return Err(self.malformed(
                    path,
                    format!("an answer of {len} bytes, expected at most {max}"),
                ));
            }
        }
        response
            .body_mut()
            .with_config()
            .limit(max)
            .read_to_vec()
            .map_err(|e| self.transport(path, e))
    }

    fn json_answer<T: DeserializeOwned>(
        &self,
        path: &str,
        mut response: Response<Body>,
    ) -> Result<T, ClientError> {
        let status = response.status().as_u16();
        if !response.status().is_success() {
            return Err(self.error_answer(path, status, response));
        }
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MAX_JSON_ANSWER_BYTES)
            .read_to_vec()
            .map_err(|e| self.transport(path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            self.malformed(
                path,
                format!(
                    "HTTP {status} body is not the expected JSON ({e}): {}",
                    snippet(&bytes)
                ),
            )
        })
    }

    /// The error a non-2xx answer stands for.
    fn error_answer(&self, path: &str, status: u16, mut response: Response<Body>) -> ClientError {
        let bytes = match response
            .body_mut()
            .with_config()
            .limit(MAX_JSON_ANSWER_BYTES)
            .read_to_vec()
        {
            Ok(bytes) => bytes,
            Err(e) => return self.transport(path, e),
        };
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => ClientError::Api {
                status,
                code: body.error.code,
                message: body.error.message,
            },
            Err(_) => self.malformed(
                path,
                format!("HTTP {status} without an error object: {}", snippet(&bytes)),
            ),
        }
    }

    fn full(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn malformed(&self, path: &str, reason: String) -> ClientError {
        ClientError::Malformed {
            url: self.full(path),
            reason,
        }
    }

    fn transport(&self, path: &str, err: ureq::Error) -> ClientError {
        match err {
            ureq::Error::BodyExceedsLimit(max) => {
                self.malformed(path, format!("an answer over {max} bytes"))
            }
            ureq::Error::Timeout(phase) => ClientError::Unreachable {
                url: self.base.clone(),
                reason: format!("no answer in time ({phase})"),
            },
            ureq::Error::Io(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
            | ureq::Error::Protocol(_) => ClientError::Unreachable {
                url: self.base.clone(),
                reason: err.to_string(),
            },
            other => self.malformed(path, other.to_string()),
        }
    }
}

/// A block reference for a path: a height, or a block hash in lowercase.
fn block_ref(which: &str) -> Result<String, ClientError> {
    let which = which.trim();
    if !which.is_empty() && which.len() < 20 && which.bytes().all(|b| b.is_ascii_digit()) {
        let height = which.parse::<u64>().map_err(|_| ClientError::BadArgument {
            what: "block",
            value: which.to_string(),
            expected: "a height or a block hash of 64 hex characters",
        })?;
        return Ok(height.to_string());
    }
    check_hex32("block", which).map_err(|_| ClientError::BadArgument {
        what: "block",
        value: which.to_string(),
        expected: "a height or a block hash of 64 hex characters",
    })?;
    Ok(which.to_ascii_lowercase())
}

/// The start of an answer body, for an error message.
fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        return "an empty body".into();
    }
    let cut: String = text.chars().take(200).collect();
    if cut.len() < text.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// Resolves an address literal (`127.0.0.1`, `[::1]`) in place and leaves
/// names to ureq's resolver. With a connect timeout set, ureq resolves on a
/// new thread so that it can give up on a slow lookup; for a literal that
/// thread only costs a CLI call its start-up, several milliseconds on a busy
/// machine.
#[derive(Debug, Default)]
struct LiteralFirst(ureq::unversioned::resolver::DefaultResolver);

impl ureq::unversioned::resolver::Resolver for LiteralFirst {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let literal = uri
            .host()
            .map(|host| host.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|host| host.parse::<std::net::IpAddr>().ok());
        match (literal, uri.port_u16()) {
            (Some(ip), Some(port)) => {
                let mut addrs = self.empty();
                addrs.push(std::net::SocketAddr::new(ip, port));
                Ok(addrs)
            }
            _ => self.0.resolve(uri, config, timeout),
        }
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        // Error statuses are answers too: their body names the error.
        .http_status_as_error(false)
        // A node's API is reached directly, never through a proxy from the
        // environment.
        .proxy(None)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .timeout_connect(Some(timeout.min(CONNECT_TIMEOUT)))
        .timeout_per_read(Some(timeout))
        .timeout_per_write(Some(timeout))
        .user_agent(concat!("gradchain/", env!("CARGO_PKG_VERSION")))
        .build();
    ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::default(),
        LiteralFirst::default(),
    )
}

/// `body` paying `fee` when given, else the least fee the chain takes for
/// its size at `rate` a byte: the `--fee` default of both CLIs.
pub fn with_fee(
    mut body: protocol::TxBody,
    fee: Option<u64>,
    rate: protocol::Amount,
) -> anyhow::Result<protocol::TxBody> {
    body.fee = match fee {
        Some(fee) => protocol::Amount(fee),
        None => body
            .min_fee_at(rate)?
            .ok_or_else(|| anyhow::anyhow!("the chain's fee rate {rate} overflows a fee"))?,
    };
    Ok(body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::thread;

    /// One request as the fake server read it.
    struct Seen {
        head: String,
        body: Vec<u8>,
    }

    /// Serves `answers` in order, one connection each, on a loopback port;
    /// sends each request it read down the channel.
    fn fake_server(answers: Vec<String>) -> (String, mpsc::Receiver<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for answer in answers {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    let end = line == "\r\n";
                    head.push_str(&line);
                    if end {
                        break;
                    }
                }
                let mut body = vec![0u8; length];
                let _ = reader.read_exact(&mut body);
                let _ = tx.send(Seen { head, body });
                let mut stream = stream;
                let _ = stream.write_all(answer.as_bytes());
                let _ = stream.flush();
            }
        });
        (url, rx)
    }

    fn answer(status: &str, content_type: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn an_error_body_becomes_the_nodes_code_and_words() {
        let body = r#"{"error":{"code":"not_found","message":"no job 00ab"}}"#;
        let (url, _) = fake_server(vec![answer("404 Not Found", "application/json", body)]);
        let client = NodeClient::new(&url).unwrap();
        let err = client.job(&JobId([0xab; 32])).unwrap_err();
        match &err {
            ClientError::Api {
                status,
                code,
                message,
            } => {
                assert_eq!(*status, 404);
                assert_eq!(*code, ErrorCode::NotFound);
                assert_eq!(message, "no job 00ab");
            }
            other => panic!("expected Api, got {other:?}"),
        }
        assert_eq!(err.to_string(), "node refused: not_found: no job 00ab");
    }

    #[test]
    fn an_unknown_job_record_is_none_and_other_refusals_are_errors() {
        let missing = r#"{"error":{"code":"not_found","message":"no such job"}}"#;
        let syncing = r#"{"error":{"code":"not_synced","message":"still syncing"}}"#;
        let (url, _) = fake_server(vec![
            answer("404 Not Found", "application/json", missing),
            answer("503 Service Unavailable", "application/json", syncing),
        ]);
        let client = NodeClient::new(&url).unwrap();
        assert!(client.job_record(&JobId([1; 32])).unwrap().is_none());
        let err = client.job_record(&JobId([1; 32])).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::NotSynced));
    }

    #[test]
    fn a_body_that_is_not_json_is_malformed() {
        let (url, _) = fake_server(vec![
            answer("200 OK", "text/html", "<html>hello</html>"),
            answer("502 Bad Gateway", "text/plain", "upstream down"),
        ]);
        let client = NodeClient::new(&url).unwrap();
        match client.status().unwrap_err() {
            ClientError::Malformed { url: at, reason } => {
                assert!(at.ends_with("/api/status"), "{at}");
                assert!(reason.contains("<html>hello</html>"), "{reason}");
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
        match client.mempool().unwrap_err() {
            ClientError::Malformed { reason, .. } => {
                assert!(reason.contains("HTTP 502"), "{reason}");
                assert!(reason.contains("upstream down"), "{reason}");
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        for (url, says) in [
            ("/ip4/127.0.0.1/tcp/9700", "multiaddr"),
            ("https://127.0.0.1:9701", "only http"),
            ("127.0.0.1:9701", "no http:// scheme"),
            ("http://", "no host"),
            ("http://127.0.0.1:0", "port \"0\""),
            ("http://127.0.0.1:99999", "port \"99999\""),
            ("http://127.0.0.1:9701/api", "only a host and a port"),
            ("http://user@host:1", "only a host and a port"),
            ("http://::1:9701", "brackets"),
            ("http://bad host:1", "only a host and a port"),
        ] {
            match NodeClient::new(url) {
                Err(err @ ClientError::BadUrl { .. }) => {
                    let text = err.to_string();
                    assert!(text.contains(says), "{url}: {text}");
                    assert!(text.contains("expected http://HOST:PORT"), "{text}");
                }
                other => panic!("{url}: expected BadUrl, got {other:?}"),
            }
        }
        assert_eq!(
            NodeClient::new("http://node4:9701/").unwrap().url(),
            "http://node4:9701"
        );
        assert_eq!(
            NodeClient::new("HTTP://localhost").unwrap().url(),
            "http://localhost:9701"
        );
        assert_eq!(
            NodeClient::new("http://[::1]:80").unwrap().url(),
            "http://[::1]:80"
        );
    }

    #[test]
    fn the_token_goes_as_a_bearer_header() {
        let ok = r#"{"predictions":[{"value":1.5}]}"#;
        let (url, seen) = fake_server(vec![
            answer("200 OK", "application/json", ok),
            answer("200 OK", "application/json", ok),
        ]);
        let client = NodeClient::new(&url)
            .unwrap()
            .with_token(Some(" s3cret\n".into()));
        let p = client
            .predict(&JobId([2; 32]), vec![vec![1.0, 2.0]])
            .unwrap();
        assert_eq!(p.predictions.len(), 1);
        assert_eq!(p.predictions[0].value, Some(1.5));
        let request = seen.recv().unwrap();
        let head = request.head.to_ascii_lowercase();
        assert!(
            head.starts_with(&format!("post /api/jobs/{}/predict ", JobId([2; 32]))),
            "{head}"
        );
        assert!(head.contains("authorization: bearer s3cret\r\n"), "{head}");
        let body: PredictRequest = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body.rows, vec![vec![1.0, 2.0]]);

        let client = client.with_token(None);
        client.predict(&JobId([2; 32]), vec![vec![1.0]]).unwrap();
        let head = seen.recv().unwrap().head.to_ascii_lowercase();
        assert!(!head.contains("authorization"), "{head}");
    }

    #[test]
    fn a_blob_answered_under_another_digest_is_refused() {
        let wrong = format!(r#"{{"digest":"{}","bytes":3}}"#, "00".repeat(32));
        let right = format!(
            r#"{{"digest":"{}","bytes":3}}"#,
            Digest(protocol::sha256(b"abc"))
        );
        let (url, seen) = fake_server(vec![
            answer("200 OK", "application/json", &wrong),
            answer("200 OK", "application/json", &right),
        ]);
        let client = NodeClient::new(&url).unwrap();
        let err = client.put_blob(BlobKind::Dataset, b"abc").unwrap_err();
        assert!(matches!(err, ClientError::Malformed { .. }), "{err:?}");
        let request = seen.recv().unwrap();
        assert!(
            request.head.starts_with(&format!(
                "POST /api/blobs?kind=dataset&digest={} ",
                Digest(protocol::sha256(b"abc"))
            )),
            "{}",
            request.head
        );
        assert_eq!(request.body, b"abc");
        let digest = client.put_blob(BlobKind::Dataset, b"abc").unwrap();
        assert_eq!(digest, Digest(protocol::sha256(b"abc")));
    }

    #[test]
    fn a_blob_whose_bytes_do_not_hash_to_its_digest_is_refused() {
        let (url, _) = fake_server(vec![answer("200 OK", "application/octet-stream", "abd")]);
        let client = NodeClient::new(&url).unwrap();
        let err = client
            .get_blob(&Digest(protocol::sha256(b"abc")))
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Malformed { reason, .. } if reason.contains("hash to")),
            "{err:?}"
        );
    }

    #[test]
    fn cursors_are_followed_to_the_last_page() {
        let job = |id: u8| serde_json::to_string(&job_view(JobId([id; 32]))).unwrap();
        let first = format!(
            r#"{{"jobs":[{}],"next_cursor":"{}"}}"#,
            job(1),
            JobId([1; 32])
        );
        let last = format!(r#"{{"jobs":[{}],"next_cursor":null}}"#, job(2));
        let (url, seen) = fake_server(vec![
            answer("200 OK", "application/json", &first),
            answer("200 OK", "application/json", &last),
        ]);
        let client = NodeClient::new(&url).unwrap();
        let jobs = client.all_jobs(Some(JobFilter::Open)).unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[1].id, JobId([2; 32]).to_string());
        assert!(seen
            .recv()
            .unwrap()
            .head
            .starts_with("GET /api/jobs?status=open "));
        let second = seen.recv().unwrap().head;
        assert!(
            second.starts_with(&format!(
                "GET /api/jobs?status=open&cursor={} ",
                JobId([1; 32])
            )),
            "{second}"
        );
    }

    #[test]
    fn a_cursor_that_does_not_move_is_refused() {
        let page = format!(r#"{{"jobs":[],"next_cursor":"{}"}}"#, JobId([5; 32]));
        let (url, _) = fake_server(vec![
            answer("200 OK", "application/json", &page),
            answer("200 OK", "application/json", &page),
        ]);
        let client = NodeClient::new(&url).unwrap();
        let err = client.all_jobs(None).unwrap_err();
        assert!(
            matches!(&err, ClientError::Malformed { reason, .. } if reason.contains("does not come after")),
            "{err:?}"
        );
    }

    #[test]
    fn a_dead_port_is_unreachable() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let err = NodeClient::new(&url).unwrap().status().unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot reach node at {url}")),
            "{err}"
        );
    }

    #[test]
    fn bad_arguments_never_reach_the_node() {
        let client = NodeClient::new("http://127.0.0.1:1").unwrap();
        let err = client.block("../status").unwrap_err();
        assert!(matches!(err, ClientError::BadArgument { .. }), "{err:?}");
        let err = client.jobs(None, Some("zz"), None).unwrap_err();
        assert!(err.to_string().contains("64 hex characters"), "{err}");
    }

    #[test]
    fn token_files_are_read_whole_and_trimmed() {
        let dir = std::env::temp_dir().join(format!("gradchain-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, "  abc123\n").unwrap();
        assert_eq!(read_token_file(&good).unwrap(), "abc123");
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let err = read_token_file(&empty).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let missing = dir.join("missing");
        let err = read_token_file(&missing).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_url_comes_from_the_flag_then_the_environment() {
        assert_eq!(resolve_url(None, None), DEFAULT_NODE_URL);
        assert_eq!(resolve_url(None, Some("")), DEFAULT_NODE_URL);
        assert_eq!(resolve_url(None, Some("http://a:1")), "http://a:1");
        assert_eq!(
            resolve_url(Some("http://b:2"), Some("http://a:1")),
            "http://b:2"
        );
    }

    fn job_view(id: JobId) -> JobView {
        JobView {
            id: id.to_string(),
            status: "open".into(),
            dataset: "00".repeat(32),
            model: "4-16-3".into(),
            bounty: 5,
            poster: "11".repeat(32),
            worker: None,
            weights_digest: None,
            fulfilled_at: None,
            posted_at: 1,
            expires_at: 100,
            segments: 4,
            bond: 5,
            challenge_window: 10,
            pending_at: None,
            settles_at: None,
            challenges: Vec::new(),
            test_accuracy: None,
            test_mse: None,
            loss_curve: None,
            audit: None,
            rejections: None,
            explanation: None,
        }
    }
}

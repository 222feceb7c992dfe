//! The node's HTTP API: REST routes under `/api`, live server-sent events
//! at `/api/events`, Prometheus metrics at `/metrics` and the dashboard at
//! `/`, served by axum on the node's own runtime.
//!
//! Reads are open. Write routes (`POST /api/tx`, `POST /api/blobs`,
//! `POST /api/jobs/{id}/predict`) require `Authorization: Bearer <token>`
//! whenever a token is configured, and a token is required to bind any
//! address but loopback (as bitcoind's rpcauth is). Every answer is JSON
//! (but raw bytes, events, metrics and the page); every error is
//! `{"error": {"code", "message"}}` with the status of its code
//! ([`protocol::api::ErrorCode`]).
//!
//! Cost order, for anything a client can send without paying: the route
//! and its path and query are parsed first, the token compared, the
//! declared body length checked against the route's cap, the client's
//! upload quota charged, and only then is a body read, a blob hashed and
//! written, or the chain asked. Nothing here holds chain state.

mod explain;
mod routes;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use protocol::api::{ApiError, ErrorBody, ErrorCode};
use tokio::sync::watch;

use crate::metrics::Labels;
use crate::net::handlers::Context;
use crate::observe::Observer;

/// The HTTP server's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// Where to listen.
    pub addr: SocketAddr,
    /// The bearer token write routes require; required unless `addr` is a
    /// loopback address.
    pub token: Option<String>,
}

/// Why the HTTP server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// A public bind without a token.
    #[error("--http {addr} is not a loopback address, and its write routes need a bearer token: pass --http-token-file FILE (or bind 127.0.0.1)")]
    TokenRequired {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// An empty token.
    #[error("the HTTP token is empty, expected at least 16 characters")]
    EmptyToken,
    /// The address could not be bound.
    #[error("cannot listen on {addr} for HTTP: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// The least length of a bearer token.
pub const MIN_TOKEN_CHARS: usize = 16;

/// What the routes reach.
#[derive(Clone)]
pub struct HttpState {
    /// The handlers' context: chain, network, blobs, params, miner stats.
    pub ctx: Context,
    /// Events, metrics, audits, refusals, hash-rate history.
    pub observer: Arc<Observer>,
    /// The metrics registry `/metrics` encodes (the node's and libp2p's).
    pub registry: Arc<Registry>,
    /// The bearer token write routes require.
    pub token: Option<Arc<str>>,
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState").finish_non_exhaustive()
    }
}

/// An error answer.
#[derive(Debug)]
pub struct Failure {
    code: ErrorCode,
    message: String,
}

impl Failure {
    /// A failure with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// 400, naming the field.
    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

impl From<crate::chain_task::ServiceError> for Failure {
    fn from(err: crate::chain_task::ServiceError) -> Self {
        match err {
            crate::chain_task::ServiceError::Stopped => {
                Self::new(ErrorCode::NotSynced, "the node is shutting down")
            }
            other => Self::internal(other.to_string()),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: ApiError {
                code: self.code,
                message: self.message,
            },
        };
        (status, Json(body)).into_response()
    }
}

/// A route's answer.
pub type Answer<T> = Result<T, Failure>;

/// Checks `config` and binds its address.
pub async fn bind(config: &HttpConfig) -> Result<tokio::net::TcpListener, HttpError> {
    match &config.token {
        Some(token) if token.trim().chars().count() < MIN_TOKEN_CHARS => {
            return Err(HttpError::EmptyToken)
        }
        None if !config.addr.ip().is_loopback() => {
            return Err(HttpError::TokenRequired { addr: config.addr })
        }
        _ => {}
    }
    let bind_error = |source| HttpError::Bind {
        addr: config.addr,
        source,
    };
    let socket = if config.addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(bind_error)?;
    socket.set_reuseaddr(true).map_err(bind_error)?;
    socket.bind(config.addr).map_err(bind_error)?;
    // A burst of clients (a dashboard per operator, scripts, a scrape)
    // waits in the kernel's accept queue, not in SYN retries.
    socket.listen(LISTEN_BACKLOG).map_err(bind_error)
}

/// Connections the kernel queues for accepting (capped by
/// `net.core.somaxconn`).
pub const LISTEN_BACKLOG: u32 = 1024;

/// The whole router.
pub fn router(state: HttpState) -> Router {
    let writes = Router::new()
        .route("/api/tx", post(routes::post_tx))
        .route("/api/blobs", post(routes::post_blob))
        .route("/api/jobs/{id}/predict", post(routes::predict))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(routes::dashboard))
        .route("/api/status", get(routes::status))
        .route("/api/blocks", get(routes::blocks))
        .route("/api/block/{which}", get(routes::block))
        .route("/api/block/{which}/raw", get(routes::block_raw))
        .route("/api/tx/{id}", get(routes::tx))
        .route("/api/tx/{id}/raw", get(routes::tx_raw))
        .route("/api/mempool", get(routes::mempool))
        .route("/api/address/{addr}", get(routes::address))
        .route("/api/peers", get(routes::peers))
        .route("/api/jobs", get(routes::jobs))
        .route("/api/jobs/{id}", get(routes::job))
        .route("/api/jobs/{id}/raw", get(routes::job_raw))
        .route("/api/blobs/{digest}", get(routes::get_blob))
        .route("/api/hashrate", get(routes::hashrate))
        .route("/api/events", get(routes::events))
        .route("/metrics", get(routes::metrics))
        .merge(writes)
        .fallback(routes::no_route)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_response,
        ))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` turns true. Also samples
/// the hash rate and publishes `status` events while anyone listens.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    mut shutdown: watch::Receiver<bool>,
) {
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, auth = state.token.is_some(), "HTTP API listening");
    let ticker = tokio::spawn(routes::run_ticker(state.clone(), shutdown.clone()));
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let stopped = async move {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
    };
    if let Err(err) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!(reason = %err, "HTTP server stopped");
    }
    ticker.abort();
}

/// Refuses a write without the bearer token, when one is configured.
async fn require_token(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    let offered = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(offered.trim().as_bytes(), token.as_bytes()) {
        next.run(request).await
    } else {
        let mut response = Failure::new(
            ErrorCode::Unauthorized,
            "this route needs the node's HTTP token: send `Authorization: Bearer <token>` (the content of --http-token-file)",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    }
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts each answer by route and status.
async fn count_response(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let labels: Labels = vec![
        ("route".into(), route),
        ("status".into(), response.status().as_u16().to_string()),
    ];
    state
        .observer
        .metrics
        .http_responses
        .get_or_create(&labels)
        .inc();
    response
}

/// The client's address, for upload quotas.
fn client_ip(addr: Option<SocketAddr>) -> IpAddr {
    addr.map_or(IpAddr::from([0u8, 0, 0, 0]), |a| a.ip())
}

/// How long a `status` event or hash-rate sample waits for the next.
const STATUS_EVERY: Duration = Duration::from_secs(2);

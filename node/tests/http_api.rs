//! The HTTP API through a real node on loopback: every route with a good
//! request and a bad one (status, code and message), bearer-token writes,
//! server-sent events, `/metrics` as a Prometheus scraper parses it, and
//! the p2p side serving nothing but gossip, sync and blob transfer.
//!
//! Requests are written by hand over a TCP socket so that the exact bytes a
//! client sends (bad hex, a lying Content-Length, no token) are what the
//! node sees.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use node::testkit::{regtest_config, wait_until};
use node::RunningNode;
use protocol::params::faucet_key;
use protocol::{codec, Address, Amount, Block, ChainParams, SignedTx, TxBody, TxKind};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// One HTTP answer.
struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts an error answer: status, code, and a message containing
    /// `mentions`.
    fn error(&self, status: u16, code: &str, mentions: &str) {
        let json = self.json();
        assert_eq!(self.status, status, "{json}");
        assert_eq!(json["error"]["code"], code, "{json}");
        let message = json["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.contains(mentions),
            "message {message:?} should mention {mentions:?}"
        );
    }
}

/// Sends one request with `Connection: close` and reads the whole answer.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Reply {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    let mut has_length = false;
    for (name, value) in headers {
        has_length |= name.eq_ignore_ascii_case("content-length");
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !has_length && method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("write head");
    // A server may answer (and close) before the body is sent.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Reply { status, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..line_end]).trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[], &[])
}

fn post(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> Reply {
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", content_type.to_owned())],
        body,
    )
}

fn address(key: &SigningKey) -> Address {
    Address::from_verifying_key(&key.verifying_key())
}

fn transfer(nonce: u64, amount: u64) -> SignedTx {
    TxBody {
        from: Address::ZERO,
        nonce,
        fee: Amount(500),
        kind: TxKind::Transfer {
            to: Address([7; 32]),
            amount: Amount(amount),
        },
    }
    .sign(&faucet_key(), ChainParams::regtest().chain_id)
    .expect("sign")
}

async fn mining_node(dir: &std::path::Path) -> RunningNode {
    let mut config = regtest_config(dir, vec![]);
    config.mine = Some(Address([9; 32]));
    config.mine_interval = Duration::from_millis(300);
    let node = node::start(config).await.expect("node starts");
    let chain = node.chain().clone();
    wait_until("height 3", WAIT, || {
        let height = chain.tip().height.0;
        async move { height >= 3 }
    })
    .await
    .expect("mines");
    node
}

fn zeros() -> String {
    "0".repeat(64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_good_and_bad_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = mining_node(dir.path()).await;
    let http = node.http_addr().expect("HTTP is on in tests");
    let result = tokio::task::spawn_blocking(move || {
        // Status.
        let status = get(http, "/api/status");
        assert_eq!(status.status, 200);
        let status = status.json();
        assert_eq!(status["chain"], "regtest");
        let height = status["height"].as_u64().expect("height");
        assert!(height >= 3);
        assert_eq!(status["tip"].as_str().map(str::len), Some(64));

        // Blocks: newest first, ten at most, paged by `from`.
        let page = get(http, "/api/blocks").json();
        let blocks = page["blocks"].as_array().expect("blocks").clone();
        assert!(!blocks.is_empty() && blocks.len() <= 10);
        let heights: Vec<u64> = blocks.iter().filter_map(|b| b["height"].as_u64()).collect();
        assert!(heights.windows(2).all(|w| w[0] == w[1] + 1), "{heights:?}");
        let page = get(http, "/api/blocks?from=1").json();
        let heights: Vec<u64> = page["blocks"]
            .as_array()
            .expect("blocks")
            .iter()
            .filter_map(|b| b["height"].as_u64())
            .collect();
        assert_eq!(heights, vec![1, 0]);
        assert!(page["next"].is_null(), "genesis ends the list");
        get(http, "/api/blocks?from=tip").error(400, "bad_request", "from");

        // One block, as JSON and raw.
        let one = get(http, "/api/block/1").json();
        let hash = one["hash"].as_str().expect("hash").to_owned();
        assert_eq!(one["height"], 1);
        assert_eq!(one["txs"][0]["kind"], "coinbase");
        let by_hash = get(http, &format!("/api/block/{hash}")).json();
        assert_eq!(by_hash["height"], 1);
        let raw = get(http, "/api/block/1/raw");
        assert_eq!(raw.status, 200);
        let block: Block = codec::decode(&raw.body).expect("raw block decodes");
        assert_eq!(block.hash().to_string(), hash);
        get(http, &format!("/api/block/{}", zeros())).error(404, "not_found", "no block");
        get(http, "/api/block/99999999").error(404, "not_found", "height 99999999");
        get(http, "/api/block/nothex").error(400, "bad_request", "nothex");

        // Transactions: bare hex, JSON hex, and refusals.
        let first = transfer(0, 5);
        let hex_body = hex::encode(codec::encode(&first).expect("encode"));
        let accepted = post(http, "/api/tx", "text/plain", hex_body.as_bytes());
        assert_eq!(
            accepted.status,
            200,
            "{}",
            String::from_utf8_lossy(&accepted.body)
        );
        let txid = accepted.json()["txid"].as_str().expect("txid").to_owned();
        assert_eq!(txid, first.id().expect("id").to_string());
        let second = transfer(1, 6);
        let json_body =
            serde_json::json!({ "hex": hex::encode(codec::encode(&second).expect("encode")) });
        let accepted = post(
            http,
            "/api/tx",
            "application/json",
            json_body.to_string().as_bytes(),
        );
        assert_eq!(
            accepted.status,
            200,
            "{}",
            String::from_utf8_lossy(&accepted.body)
        );
        post(http, "/api/tx", "text/plain", b"zz").error(400, "bad_request", "hex");
        post(http, "/api/tx", "text/plain", b"00ff").error(
            400,
            "bad_request",
            "not a signed transaction",
        );
        post(http, "/api/tx", "application/json", b"{\"tx\": 1}").error(400, "bad_request", "hex");
        let mut forged = transfer(2, 7);
        if let TxKind::Transfer { amount, .. } = &mut forged.body.kind {
            *amount = Amount(1_000);
        }
        let forged = hex::encode(codec::encode(&forged).expect("encode"));
        post(http, "/api/tx", "text/plain", forged.as_bytes()).error(
            400,
            "tx_rejected",
            "signature",
        );
        let big = vec![b'a'; 5 * 1024 * 1024];
        post(http, "/api/tx", "text/plain", &big).error(413, "too_large", "larger than");

        // The transaction, found in the mempool or a block.
        let found = get(http, &format!("/api/tx/{txid}"));
        assert_eq!(found.status, 200);
        let found = found.json();
        assert_eq!(found["kind"], "transfer");
        assert_eq!(found["amount"], 5);
        assert!(found["in_mempool"].as_bool().expect("flag") || found["block"]["height"].is_u64());
        let raw = get(http, &format!("/api/tx/{txid}/raw"));
        let tx: protocol::Transaction = codec::decode(&raw.body).expect("raw tx decodes");
        assert_eq!(tx.id().expect("id").to_string(), txid);
        get(http, &format!("/api/tx/{}", zeros())).error(404, "not_found", "no transaction");
        get(http, "/api/tx/12").error(400, "bad_request", "transaction id");

        // Mempool, addresses, peers.
        let mempool = get(http, "/api/mempool").json();
        assert!(mempool["count"].is_u64() && mempool["bytes"].is_u64());
        let faucet = address(&faucet_key()).to_string();
        let account = get(http, &format!("/api/address/{faucet}")).json();
        assert!(account["balance"].as_u64().expect("balance") > 0);
        assert_eq!(account["next_nonce"], 2, "two transfers wait or are mined");
        get(http, "/api/address/xyz").error(400, "bad_request", "address");
        // A state proof, checked as a light client would: against the state
        // root of the header of the block it names, fetched raw.
        let proven = get(http, &format!("/api/address/{faucet}?proof")).json();
        let view: protocol::api::ProofView =
            serde_json::from_value(proven["proof"].clone()).expect("proof view");
        let raw = get(http, &format!("/api/block/{}/raw", view.tip));
        let block: protocol::Block = codec::decode(&raw.body).expect("raw block decodes");
        let root = block.header.state_root;
        let (balance, nonce) = (
            proven["balance"].as_u64().expect("balance"),
            proven["nonce"].as_u64().expect("nonce"),
        );
        let faucet_address = address(&faucet_key());
        assert!(view.exists);
        assert!(
            view.verify(&root, faucet_address, balance, nonce),
            "the proof verifies"
        );
        assert!(
            !view.verify(&root, faucet_address, balance + 1, nonce),
            "a tampered balance"
        );
        let nobody = protocol::Address([0x5a; 32]);
        let absent = get(http, &format!("/api/address/{nobody}?proof=true")).json();
        let absent_view: protocol::api::ProofView =
            serde_json::from_value(absent["proof"].clone()).expect("proof view");
        assert!(!absent_view.exists);
        let raw = get(http, &format!("/api/block/{}/raw", absent_view.tip));
        let block: protocol::Block = codec::decode(&raw.body).expect("raw block decodes");
        assert!(
            absent_view.verify(&block.header.state_root, nobody, 0, 0),
            "absent"
        );
        assert!(account.get("proof").is_none(), "no proof unless asked");
        get(http, &format!("/api/address/{faucet}?proof=maybe")).error(400, "bad_request", "proof");
        let peers = get(http, "/api/peers").json();
        assert_eq!(peers["peers"].as_array().map(Vec::len), Some(0));

        // Jobs (none yet) and their refusals.
        let jobs = get(http, "/api/jobs").json();
        assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(0));
        assert!(jobs["next_cursor"].is_null());
        get(http, "/api/jobs?status=done").error(400, "bad_request", "status");
        get(http, "/api/jobs?limit=0").error(400, "bad_request", "limit");
        get(http, "/api/jobs?cursor=zz").error(400, "bad_request", "cursor");
        assert_eq!(get(http, "/api/jobs?order=recent").status, 200);
        get(http, "/api/jobs?order=newest").error(400, "bad_request", "order");
        get(http, &format!("/api/jobs?order=recent&cursor={}", zeros())).error(
            400,
            "bad_request",
            "HEIGHT.JOBID",
        );
        get(http, &format!("/api/jobs/{}", zeros())).error(404, "not_found", "no job");
        get(http, &format!("/api/jobs/{}/raw", zeros())).error(404, "not_found", "no job");
        get(http, "/api/jobs/short").error(400, "bad_request", "job id");
        let predict = format!("/api/jobs/{}/predict", zeros());
        post(
            http,
            &predict,
            "application/json",
            b"{\"rows\": [[1.0, 2.0]]}",
        )
        .error(404, "not_found", "no job");
        post(http, &predict, "application/json", b"rows").error(400, "bad_request", "rows");
        post(http, &predict, "application/json", b"{\"rows\": []}").error(
            400,
            "bad_request",
            "rows",
        );

        // Blobs: a dataset stored and read back; refusals before the body.
        let iris = trainer::Dataset::from_csv_file(
            std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../datasets/iris.csv")),
            trainer::TaskKind::Classification,
            &trainer::DatasetLimits::default(),
        )
        .expect("iris");
        let blob = iris.to_blob();
        let stored = post(
            http,
            "/api/blobs?kind=dataset",
            "application/octet-stream",
            &blob,
        );
        assert_eq!(
            stored.status,
            200,
            "{}",
            String::from_utf8_lossy(&stored.body)
        );
        let digest = stored.json()["digest"].as_str().expect("digest").to_owned();
        assert_eq!(digest, hex::encode(protocol::sha256(&blob)));
        let named = post(
            http,
            &format!("/api/blobs?kind=dataset&digest={digest}"),
            "application/octet-stream",
            &blob,
        );
        assert_eq!(named.status, 200, "a held blob answers at once");
        let back = get(http, &format!("/api/blobs/{digest}"));
        assert_eq!(back.status, 200);
        assert_eq!(back.body, blob);
        get(http, &format!("/api/blobs/{}", zeros())).error(404, "not_found", "not held");
        get(http, &format!("/api/blobs/{digest}?by=name")).error(400, "bad_request", "by");
        post(
            http,
            "/api/blobs?kind=model",
            "application/octet-stream",
            b"x",
        )
        .error(400, "bad_request", "kind");
        post(
            http,
            "/api/blobs?kind=dataset",
            "application/octet-stream",
            b"not a dataset",
        )
        .error(400, "bad_request", "dataset");
        let wrong = post(
            http,
            &format!("/api/blobs?kind=state&digest={}", zeros()),
            "application/octet-stream",
            b"state bytes",
        );
        wrong.error(400, "bad_request", "expected");
        let huge = request(
            http,
            "POST",
            "/api/blobs?kind=state",
            &[("Content-Length", (200u64 << 20).to_string())],
            &[],
        );
        huge.error(413, "too_large", "expected at most");

        get(http, "/api/nothing").error(404, "not_found", "no route");
        Ok::<_, String>(())
    })
    .await;
    node.stop().await;
    result.expect("no panic").expect("routes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_over_the_client_quota_is_refused_with_429() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node::start(regtest_config(dir.path(), vec![]))
        .await
        .expect("node");
    let small = node::blobs::QuotaPolicy {
        in_flight: 1 << 20,
        per_window: 4096,
        window: Duration::from_secs(600),
    };
    node.blobs().set_quotas(small, small);
    let http = node.http_addr().expect("http");
    let reply = tokio::task::spawn_blocking(move || {
        let first = post(
            http,
            "/api/blobs?kind=state",
            "application/octet-stream",
            &[1u8; 3000],
        );
        assert_eq!(
            first.status,
            200,
            "{}",
            String::from_utf8_lossy(&first.body)
        );
        post(
            http,
            "/api/blobs?kind=state",
            "application/octet-stream",
            &[2u8; 3000],
        )
    })
    .await
    .expect("no panic");
    node.stop().await;
    reply.error(429, "quota_exceeded", "per-600s-window");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_need_the_token_and_a_public_bind_needs_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = regtest_config(dir.path(), vec![]);
    config.http = Some(SocketAddr::from(([0, 0, 0, 0], 0)));
    let refused = node::start(config.clone())
        .await
        .expect_err("no token, public bind");
    assert!(
        refused.to_string().contains("--http-token-file"),
        "{refused}"
    );
    let token = "0123456789abcdef-token";
    config.http_token = Some(token.into());
    let node = node::start(config).await.expect("node with a token");
    let port = node.http_addr().expect("http").port();
    let http = SocketAddr::from(([127, 0, 0, 1], port));
    let (without, wrong, with, read) = tokio::task::spawn_blocking(move || {
        let without = post(http, "/api/tx", "text/plain", b"00");
        let wrong = request(
            http,
            "POST",
            "/api/tx",
            &[("Authorization", "Bearer not-the-token-at-all".into())],
            b"00",
        );
        let with = request(
            http,
            "POST",
            "/api/tx",
            &[("Authorization", format!("Bearer {token}"))],
            b"00",
        );
        (without, wrong, with, get(http, "/api/status"))
    })
    .await
    .expect("no panic");
    node.stop().await;
    without.error(401, "unauthorized", "Bearer");
    wrong.error(401, "unauthorized", "Bearer");
    // With the token the request reaches the route, which refuses the bytes.
    with.error(400, "bad_request", "not a signed transaction");
    assert_eq!(read.status, 200, "reads stay open");
}

/// Reads SSE events (name, data) from `reader` until `pick` returns a value.
fn read_events<T>(
    reader: &mut BufReader<TcpStream>,
    mut pick: impl FnMut(&str, &Value) -> Option<T>,
) -> T {
    let mut name = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).expect("event stream");
        assert!(n > 0, "event stream ended");
        let line = line.trim_end();
        if let Some(value) = line.strip_prefix("event: ") {
            name = value.to_owned();
        } else if let Some(data) = line.strip_prefix("data: ") {
            let json: Value = serde_json::from_str(data).unwrap_or(Value::Null);
            if let Some(found) = pick(&name, &json) {
                return found;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_event_arrives_within_a_block_and_a_gone_client_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = mining_node(dir.path()).await;
    let http = node.http_addr().expect("http");
    let observer = node.observer().clone();
    let chain = node.chain().clone();
    let stream = TcpStream::connect(http).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    writer
        .write_all(
            format!(
                "GET /api/events HTTP/1.1\r\nHost: {http}\r\nAccept: text/event-stream\r\n\r\n"
            )
            .as_bytes(),
        )
        .expect("request");
    wait_until("the subscription", WAIT, || {
        let n = observer.subscribers();
        async move { n == 1 }
    })
    .await
    .expect("subscribed");
    let subscribed_at = chain.tip().height.0;
    let (height, hash) = tokio::task::spawn_blocking(move || {
        let mut reader = BufReader::new(stream);
        let started = Instant::now();
        let found = read_events(&mut reader, |name, data| {
            (name == "block").then(|| {
                (
                    data["height"].as_u64().unwrap_or(0),
                    data["hash"].as_str().unwrap_or("").to_owned(),
                )
            })
        });
        assert!(started.elapsed() < WAIT);
        found
    })
    .await
    .expect("no panic");
    // The first block event is the first block connected after subscribing
    // (or the one after, if one connected while the request was parsed).
    assert!(
        height == subscribed_at + 1 || height == subscribed_at + 2,
        "first event at height {height}, subscribed at {subscribed_at}"
    );
    let info = chain
        .block(protocol::api::BlockRef::Height(protocol::Height(height)))
        .await
        .expect("chain")
        .expect("block");
    assert_eq!(info.hash.to_string(), hash);
    drop(writer);
    wait_until("the subscription to end", WAIT, || {
        let n = observer.subscribers();
        async move { n == 0 }
    })
    .await
    .expect("a client that left holds no subscription");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_and_hold_the_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = mining_node(dir.path()).await;
    let http = node.http_addr().expect("http");
    let (text, status) = tokio::task::spawn_blocking(move || {
        let reply = get(http, "/metrics");
        assert_eq!(reply.status, 200);
        (
            String::from_utf8(reply.body).expect("utf-8"),
            get(http, "/api/status").json(),
        )
    })
    .await
    .expect("no panic");
    node.stop().await;
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("parses as Prometheus text");
    let names: std::collections::BTreeSet<&str> =
        scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for name in [
        "gradchain_chain_height",
        "gradchain_chain_total_work",
        "gradchain_peers",
        "gradchain_mempool_transactions",
        "gradchain_mempool_bytes",
        "gradchain_blocks_mined_total",
        "gradchain_blocks_accepted_total",
        "gradchain_reorgs_total",
        "gradchain_reorg_depth_count",
        "gradchain_hashrate",
        "gradchain_jobs",
        "gradchain_replay_seconds_count",
        "gradchain_audit_seconds_count",
        "gradchain_blob_store_bytes",
        "gradchain_http_event_subscribers",
    ] {
        assert!(names.contains(name), "{name} missing from {names:?}");
    }
    // Labelled families start with every known label at zero.
    for (name, label, value) in [
        ("gradchain_blocks_rejected_total", "reason", "invalid_block"),
        ("gradchain_blocks_rejected_total", "reason", "out_of_reach"),
        ("gradchain_audits_total", "outcome", "fraud_found"),
        ("gradchain_fraud_proofs_total", "outcome", "proven"),
        ("gradchain_fraud_proofs_total", "outcome", "refuted"),
    ] {
        assert!(
            scrape
                .samples
                .iter()
                .any(|s| s.metric == name && s.labels.get(label) == Some(value)),
            "{name}{{{label}=\"{value}\"}} missing"
        );
    }
    // Every sample belongs to a family that announces itself.
    for name in names.iter().filter(|n| n.starts_with("gradchain_")) {
        assert!(
            scrape
                .docs
                .keys()
                .any(|family| name.starts_with(family.as_str())),
            "{name} has no # HELP"
        );
    }
    assert!(
        names.iter().any(|n| n.starts_with("libp2p_")),
        "libp2p's own metrics are exported"
    );
    let value = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or(f64::NAN)
    };
    let height = status["height"].as_u64().expect("height") as f64;
    let scraped = value("gradchain_chain_height");
    assert!(
        (height - scraped).abs() <= 3.0,
        "metrics height {scraped} vs status {height}"
    );
    assert!(value("gradchain_blocks_mined_total") >= 3.0);
    let jobs_open = scrape
        .samples
        .iter()
        .find(|s| s.metric == "gradchain_jobs" && s.labels.get("status") == Some("open"));
    assert!(jobs_open.is_some(), "jobs are labelled by status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p2p_peer_is_offered_no_rpc_protocol() {
    use futures::StreamExt;
    use libp2p::swarm::SwarmEvent;
    use libp2p::{identify, noise, tcp, yamux};

    let dir = tempfile::tempdir().expect("tempdir");
    let node = node::start(regtest_config(dir.path(), vec![]))
        .await
        .expect("node");
    let target = node.p2p_addr().expect("p2p address");
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("transport")
        .with_behaviour(|key| {
            identify::Behaviour::new(identify::Config::new(
                "/gradchain/id/1".into(),
                key.public(),
            ))
        })
        .expect("behaviour")
        .build();
    swarm.dial(target).expect("dial");
    let protocols = tokio::time::timeout(WAIT, async {
        loop {
            if let SwarmEvent::Behaviour(identify::Event::Received { info, .. }) =
                swarm.select_next_some().await
            {
                return info.protocols;
            }
        }
    })
    .await
    .expect("identify answers");
    node.stop().await;
    let names: Vec<String> = protocols.iter().map(ToString::to_string).collect();
    assert!(
        !names.iter().any(|p| p.contains("/gradchain/rpc")),
        "the peer RPC is retired: {names:?}"
    );
    assert!(
        names.iter().any(|p| p.starts_with("/gradchain/sync")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|p| p.starts_with("/gradchain/blob")),
        "{names:?}"
    );
    // Every protocol offered is gossip, sync, blob fetch or libp2p's own.
    for name in &names {
        assert!(
            name.starts_with("/gradchain/sync")
                || name.starts_with("/gradchain/blob")
                || name.starts_with("/meshsub")
                || name.starts_with("/floodsub")
                || name.starts_with("/ipfs/")
                || name.starts_with("/gradchain/id"),
            "unexpected protocol {name} in {names:?}"
        );
    }
}

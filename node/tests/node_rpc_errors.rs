//! The HTTP API through the client and the `rpc` command with bad input:
//! an unknown block, transaction, job or blob, malformed hex, a bad
//! signature, an overspend, an oversized blob and a write without the token
//! each get the status, code and message that name the problem, and the
//! node stays up.

use std::process::Command;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use node::testkit::{init_test_logging, regtest_config};
use protocol::api::ErrorCode;
use protocol::blob::{BlobKind, MAX_WEIGHTS_BYTES};
use protocol::params::faucet_key;
use protocol::{Address, Amount, BlockHash, ChainParams, Digest, JobId, TxBody, TxId, TxKind};
use trainer::client::{ClientError, NodeClient};

const TIMEOUT: Duration = Duration::from_secs(30);
/// The node's HTTP token in this test.
const TOKEN: &str = "a-token-of-at-least-16-chars";

/// Writes a key file readable by its owner only, as `keygen` does.
fn write_key(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())
}

/// Asserts that `outcome` is the node's refusal with `status` and `code`,
/// its message mentioning `needle`.
fn expect_refusal<T: std::fmt::Debug>(
    outcome: Result<T, ClientError>,
    status: u16,
    code: ErrorCode,
    needle: &str,
) {
    match outcome {
        Err(ClientError::Api {
            status: got_status,
            code: got_code,
            message,
        }) => {
            assert_eq!((got_status, got_code), (status, code), "{message}");
            assert_eq!(code.status(), status);
            assert!(
                message.contains(needle),
                "{message:?} does not mention {needle:?}"
            );
        }
        other => panic!("expected a {status} {code:?} refusal, got {other:?}"),
    }
}

fn cli(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_gradchain-node"))
        .args(args)
        .env_remove("GRADCHAIN_NODE")
        .env_remove("GRADCHAIN_HTTP_TOKEN_FILE")
        .output()
        .expect("run gradchain-node");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs the blocking client's calls on a thread of their own, so that the
/// runtime's workers keep serving the node.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("the client thread ran")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_input_gets_clear_errors_and_the_node_stays_up() -> anyhow::Result<()> {
    init_test_logging();
    let dir = tempfile::tempdir()?;
    let mut config = regtest_config(dir.path(), vec![]);
    config.http_token = Some(TOKEN.into());
    let node = node::start(config).await?;
    let url = node
        .http_url()
        .ok_or_else(|| anyhow::anyhow!("the node serves no HTTP API"))?;
    let token_file = dir.path().join("http-token");
    std::fs::write(&token_file, format!("{TOKEN}\n"))?;
    let params = ChainParams::regtest();
    let anonymous = NodeClient::new(&url)?.with_timeout(TIMEOUT);
    let api = anonymous.clone().with_token(Some(TOKEN.into()));

    let mut forged = TxBody {
        from: params.faucet,
        nonce: 0,
        fee: Amount(500),
        kind: TxKind::Transfer {
            to: Address([1; 32]),
            amount: Amount(10),
        },
    }
    .sign(&faucet_key(), params.chain_id)?;
    forged.body.kind = TxKind::Transfer {
        to: Address([1; 32]),
        amount: Amount(10_000),
    };
    let poor = SigningKey::from_bytes(&[3; 32]);
    let overspend = TxBody {
        from: Address::ZERO,
        nonce: 0,
        fee: Amount(500),
        kind: TxKind::Transfer {
            to: Address([1; 32]),
            amount: Amount(1_000),
        },
    }
    .sign(&poor, params.chain_id)?;
    let good = TxBody {
        from: params.faucet,
        nonce: 0,
        fee: Amount(500),
        kind: TxKind::Transfer {
            to: Address([1; 32]),
            amount: Amount(10),
        },
    }
    .sign(&faucet_key(), params.chain_id)?;

    let (api_c, anonymous_c) = (api.clone(), anonymous.clone());
    blocking(move || {
        let (api, anonymous) = (api_c, anonymous_c);
        // Unknown things are 404 and named.
        expect_refusal(api.block("10000"), 404, ErrorCode::NotFound, "10000");
        let unknown_hash = BlockHash([0xab; 32]);
        expect_refusal(
            api.block(&unknown_hash.to_string()),
            404,
            ErrorCode::NotFound,
            &unknown_hash.to_string(),
        );
        expect_refusal(api.block_raw("10000"), 404, ErrorCode::NotFound, "10000");
        let unknown_tx = TxId([0xcd; 32]);
        expect_refusal(
            api.tx(&unknown_tx),
            404,
            ErrorCode::NotFound,
            &unknown_tx.to_string(),
        );
        let unknown_job = JobId([0xef; 32]);
        expect_refusal(
            api.job(&unknown_job),
            404,
            ErrorCode::NotFound,
            &unknown_job.to_string(),
        );
        assert!(api
            .job_record(&unknown_job)
            .expect("a 404 is an answer")
            .is_none());
        expect_refusal(
            api.predict(&unknown_job, vec![vec![1.0]]),
            404,
            ErrorCode::NotFound,
            &unknown_job.to_string(),
        );
        let unknown_blob = Digest([0x12; 32]);
        expect_refusal(
            api.get_blob(&unknown_blob),
            404,
            ErrorCode::NotFound,
            &unknown_blob.to_string(),
        );

        // Malformed hex is 400 and names the field.
        expect_refusal(
            api.get_json::<serde_json::Value>("/api/jobs/zz"),
            400,
            ErrorCode::BadRequest,
            "\"zz\" is not 64 hex characters",
        );
        expect_refusal(
            api.get_json::<serde_json::Value>("/api/address/not-an-address"),
            400,
            ErrorCode::BadRequest,
            "address",
        );
        expect_refusal(
            api.post_body::<serde_json::Value>("/api/tx", "text/plain", b"zz-not-hex"),
            400,
            ErrorCode::BadRequest,
            "not hexadecimal",
        );
        expect_refusal(
            api.post_body::<serde_json::Value>(
                "/api/tx",
                "application/json",
                b"{\"hex\":\"00ff\"}",
            ),
            400,
            ErrorCode::BadRequest,
            "not a signed transaction",
        );

        // Refused transactions are 400 tx_rejected with the reason.
        expect_refusal(
            api.submit_tx(&forged),
            400,
            ErrorCode::TxRejected,
            "signature does not verify",
        );
        expect_refusal(
            api.submit_tx(&overspend),
            400,
            ErrorCode::TxRejected,
            // Amount, fee and the charge for creating the recipient.
            "needs 101500 but has 0",
        );

        // A blob over its kind's cap is refused before it is sent.
        let oversized = vec![7u8; MAX_WEIGHTS_BYTES + 1];
        expect_refusal(
            api.put_blob(BlobKind::Weights, &oversized),
            413,
            ErrorCode::TooLarge,
            &(MAX_WEIGHTS_BYTES + 1).to_string(),
        );

        // Writes need the token; reads do not.
        expect_refusal(
            anonymous.submit_tx(&good),
            401,
            ErrorCode::Unauthorized,
            "Authorization: Bearer",
        );
        expect_refusal(
            anonymous.put_blob(BlobKind::Dataset, b"not stored"),
            401,
            ErrorCode::Unauthorized,
            "Authorization: Bearer",
        );
        let wrong = anonymous.clone().with_token(Some("x".repeat(20)));
        expect_refusal(
            wrong.submit_tx(&good),
            401,
            ErrorCode::Unauthorized,
            "Authorization: Bearer",
        );
        anonymous.status().expect("reads need no token");
    })
    .await;
    assert_eq!(node.chain().mempool_ids().await?.len(), 0);

    // The command line: one line on stderr and a non-zero exit.
    let (ok, _, stderr) = cli(&["rpc", "--node", &url, "balance", "not-an-address"]);
    assert!(!ok);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("expected 64 hex characters"), "{stderr}");
    let (ok, _, stderr) = cli(&["rpc", "--node", &url, "block", "123456", "--json"]);
    assert!(!ok);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("node refused: not_found"), "{stderr}");
    assert!(stderr.contains("123456"), "{stderr}");
    let (ok, _, stderr) = cli(&["rpc", "--node", &url, "job", &"ef".repeat(32)]);
    assert!(!ok);
    assert!(stderr.contains("node refused: not_found"), "{stderr}");
    let (ok, _, stderr) = cli(&["rpc", "--node", &url, "status", "--bogus"]);
    assert!(!ok);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let (ok, _, stderr) = cli(&[
        "healthcheck",
        "--node",
        "/ip4/127.0.0.1/tcp/1",
        "--timeout",
        "5",
    ]);
    assert!(!ok);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("expected http://HOST:PORT"), "{stderr}");
    let (ok, _, stderr) = cli(&[
        "healthcheck",
        "--node",
        "http://127.0.0.1:1",
        "--timeout",
        "5",
    ]);
    assert!(!ok);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot reach node at http://127.0.0.1:1"),
        "{stderr}"
    );
    let (ok, stdout, stderr) = cli(&["healthcheck", "--node", &url]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("ok height 0 tip "), "{stdout}");

    // A transfer: refused without the token, accepted with it.
    let key_file = dir.path().join("faucet.key");
    write_key(&key_file, &hex::encode(faucet_key().to_bytes()))?;
    let key_arg = key_file.display().to_string();
    let to = Address([1; 32]).to_string();
    let transfer = ["transfer", "--key", &key_arg, "--to", &to, "--amount", "10"];
    let mut args = vec!["rpc", "--node", &url];
    args.extend(transfer);
    let (ok, _, stderr) = cli(&args);
    assert!(!ok);
    assert!(stderr.contains("node refused: unauthorized"), "{stderr}");
    let token_arg = token_file.display().to_string();
    let mut args = vec!["rpc", "--node", &url, "--http-token-file", &token_arg];
    args.extend(transfer);
    args.push("--json");
    let (ok, stdout, stderr) = cli(&args);
    assert!(ok, "{stderr}");
    let sent: serde_json::Value = serde_json::from_str(stdout.trim())?;
    assert_eq!(sent["nonce"], serde_json::json!(0));
    let txid: TxId = sent["txid"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no txid in {sent}"))?
        .parse()?;
    assert_eq!(node.chain().mempool_ids().await?, vec![txid]);

    // Still up and answering.
    let (ok, stdout, stderr) = cli(&["rpc", "--node", &url, "status", "--json"]);
    assert!(ok, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(stdout.trim())?;
    for key in [
        "chain",
        "height",
        "tip",
        "total_work",
        "peers",
        "mempool",
        "mining",
        "hashrate",
        "state_root",
        "peer_id",
    ] {
        assert!(status.get(key).is_some(), "status lacks {key}: {status}");
    }
    assert_eq!(status["mempool"], serde_json::json!(1));
    let (ok, stdout, _) = cli(&[
        "rpc",
        "--node",
        &url,
        "balance",
        &params.faucet.to_string(),
        "--json",
    ]);
    assert!(ok);
    let balance: serde_json::Value = serde_json::from_str(stdout.trim())?;
    assert_eq!(
        balance["balance"],
        serde_json::json!(params.faucet_premine.0)
    );
    assert_eq!(balance["nonce"], serde_json::json!(0));
    assert_eq!(balance["next_nonce"], serde_json::json!(1));

    node.stop().await;
    Ok(())
}

//! The peer RPC and the `rpc` command with bad input: an unknown block, a
//! malformed address, undecodable bytes, a bad signature and an overspend
//! each get a clear error with a code, and the node stays up.

use std::process::Command;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use node::rpc_client;
use node::testkit::{init_test_logging, start_regtest};
use protocol::params::faucet_key;
use protocol::rpc::{BlockRef, RpcErrorCode, RpcRequest, RpcResponse};
use protocol::{Address, Amount, BlockHash, ChainParams, Height, TxBody, TxKind};

const TIMEOUT: Duration = Duration::from_secs(30);

fn expect_error(response: RpcResponse, code: RpcErrorCode, needle: &str) {
    match response {
        RpcResponse::Error(err) => {
            assert_eq!(err.code, code, "{}", err.message);
            assert!(
                err.message.contains(needle),
                "{:?} does not mention {needle:?}",
                err.message
            );
        }
        other => panic!("expected a {code:?} error, got {other:?}"),
    }
}

fn cli(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_gradchain-node"))
        .args(args)
        .output()
        .expect("run gradchain-node");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rpc_input_gets_clear_errors_and_the_node_stays_up() -> anyhow::Result<()> {
    init_test_logging();
    let dir = tempfile::tempdir()?;
    let node = start_regtest(dir.path(), vec![], None).await?;
    let addr = node
        .p2p_addr()
        .ok_or_else(|| anyhow::anyhow!("no listen address"))?;
    let params = ChainParams::regtest();

    let unknown_height = rpc_client::call(
        &addr,
        &RpcRequest::Block(BlockRef::Height(Height(10_000))),
        TIMEOUT,
    )
    .await?;
    expect_error(unknown_height, RpcErrorCode::NotFound, "10000");
    let unknown_hash = BlockHash([0xab; 32]);
    let response = rpc_client::call(
        &addr,
        &RpcRequest::Block(BlockRef::Hash(unknown_hash)),
        TIMEOUT,
    )
    .await?;
    expect_error(response, RpcErrorCode::NotFound, &unknown_hash.to_string());

    let garbage = rpc_client::call_bytes(&addr, vec![0xff; 40], TIMEOUT).await?;
    let garbage: RpcResponse = protocol::codec::decode(&garbage)?;
    expect_error(garbage, RpcErrorCode::Malformed, "undecodable");

    let mut forged = TxBody {
        from: params.faucet,
        nonce: 0,
        fee: Amount(5),
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
    let response = rpc_client::call(&addr, &RpcRequest::SubmitTx(forged), TIMEOUT).await?;
    expect_error(
        response,
        RpcErrorCode::TxRejected,
        "signature does not verify",
    );

    let poor = SigningKey::from_bytes(&[3; 32]);
    let overspend = TxBody {
        from: Address::ZERO,
        nonce: 0,
        fee: Amount(5),
        kind: TxKind::Transfer {
            to: Address([1; 32]),
            amount: Amount(1_000),
        },
    }
    .sign(&poor, params.chain_id)?;
    let response = rpc_client::call(&addr, &RpcRequest::SubmitTx(overspend), TIMEOUT).await?;
    expect_error(response, RpcErrorCode::TxRejected, "needs 1005 but has 0");

    // The command line: one line on stderr and a non-zero exit.
    let node_arg = addr.to_string();
    let (ok, _, stderr) = cli(&["rpc", "--node", &node_arg, "balance", "not-an-address"]);
    assert!(!ok);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("expected 64 hex characters"), "{stderr}");
    let (ok, _, stderr) = cli(&["rpc", "--node", &node_arg, "block", "123456", "--json"]);
    assert!(!ok);
    assert!(stderr.contains("NotFound"), "{stderr}");
    let (ok, _, stderr) = cli(&["rpc", "--node", &node_arg, "status", "--bogus"]);
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

    // Still up and answering.
    let (ok, stdout, stderr) = cli(&["rpc", "--node", &node_arg, "status", "--json"]);
    assert!(ok, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(stdout.trim())?;
    for key in [
        "height",
        "tip",
        "total_work",
        "peers",
        "mempool",
        "mining",
        "hashrate",
        "state_root",
    ] {
        assert!(status.get(key).is_some(), "status lacks {key}: {status}");
    }
    let (ok, stdout, _) = cli(&[
        "rpc",
        "--node",
        &node_arg,
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
    assert_eq!(node.chain().mempool_ids().await?.len(), 0);

    node.stop().await;
    Ok(())
}

#!/usr/bin/env python3
"""Independent golden vectors for gradchain's consensus hashes.

This script recomputes, from the written format alone (docs/DESIGN.md, the
doc comments of protocol/src), the values that protocol/tests/golden.rs pins
as hex constants; that test runs this script and compares line by line. It
uses nothing but the Python standard library: hashlib for SHA-256 and
SHA-512, and a small ed25519 signer (RFC 8032, checked against the RFC's
first test vector before anything is printed). No Rust code is called.

What it encodes, byte by byte (the canonical codec is bincode 2 over serde
with fixed-width little-endian integers):

  * integers: u16/u32/u64 little-endian at their full width; `F32Bits` as
    its u32; 32-byte ids and addresses raw; a signature as 64 raw bytes
    (a fixed-length tuple, no length prefix);
  * `Vec<T>`: a u64 element count, then the elements;
  * enums: a u32 variant index (declaration order), then the fields;
  * structs: their fields in declaration order, no padding.

Hashes:

  * txid of a signed transaction: sha256d(b"tx" || encode(SignedTx)); the
    signature is ed25519 over b"gradchain/tx/v1" || chain_id (u32) ||
    encode(TxBody), and `from` is the signer's public key;
  * coinbase id: sha256d(b"cb" || encode(Coinbase));
  * transaction merkle root: leaf = sha256d(0x00 || txid), inner node =
    sha256d(0x01 || left || right), an odd last node is promoted unchanged
    to the next level, and an empty list has the root sha256d(0x02);
  * state root: the root of a binary Merkle tree over 256-bit keys (bits
    most significant first). An account is the leaf with key
    sha256(b"gradchain/state/account/" || address) and value
    sha256(balance u64 || nonce u64); a job the leaf with key
    sha256(b"gradchain/state/job/" || id) and value sha256(encode(JobRecord)).
    An empty subtree hashes to 32 zero bytes; a subtree holding one leaf
    hashes to sha256(0x00 || key || value) at any depth; a subtree holding
    two or more is sha256(0x01 || left || right), its halves split on the
    next key bit;
  * segments root: leaf j = sha256(b"gradchain/segment-leaf/v1" || j (u32)
    || state digest || loss bits (u32)), inner node =
    sha256(b"gradchain/segment-node/v1" || left || right), odd last node
    promoted;
  * worker seed: the first 8 bytes, read as a little-endian u64, of
    sha256(b"gradchain/worker-seed/v1" || job id || worker || base seed u64);
  * block hash: sha256d of the 116-byte header (version u32, previous hash,
    merkle root, state root, time u32, bits u32, nonce u64);
  * genesis: one coinbase at height 0 paying the faucet premine
    (1,000,000 coins of 10^8 units) to the faucet, whose key is the ed25519
    key of the public seed b"gradchain devnet faucet seed 001"; the state
    holds only the faucet's account; version 1, previous hash zero, time
    1767225600 (2026-01-01), nonce 0, bits 0x1d180000 on devnet and
    0x207fffff on regtest.

Output: one `name value` line per vector, values in lowercase hex (the
worker seed as 16 hex digits of its u64 value).
"""

import hashlib
import struct
import sys

# --- ed25519 (RFC 8032, section 5.1) -------------------------------------

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def _recover_x(y, sign):
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P != 0:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P != 0:
        raise ValueError("not a square")
    if x & 1 != sign:
        x = P - x
    return x


_GY = 4 * pow(5, P - 2, P) % P
_GX = _recover_x(_GY, 0)
G = (_GX, _GY, 1, _GX * _GY % P)
IDENTITY = (0, 1, 1, 0)


def _add(a, b):
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % P
    bb = (y1 + x1) * (y2 + x2) % P
    cc = 2 * t1 * t2 * D % P
    dd = 2 * z1 * z2 % P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(scalar, point):
    out = IDENTITY
    while scalar > 0:
        if scalar & 1:
            out = _add(out, point)
        point = _add(point, point)
        scalar >>= 1
    return out


def _compress(point):
    x, y, z, _ = point
    zinv = pow(z, P - 2, P)
    x, y = x * zinv % P, y * zinv % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _expand(seed):
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little")
    a &= (1 << 254) - 8
    a |= 1 << 254
    return a, h[32:]


def _hash_mod_l(data):
    return int.from_bytes(hashlib.sha512(data).digest(), "little") % L


def public_key(seed):
    a, _ = _expand(seed)
    return _compress(_mul(a, G))


def sign(seed, message):
    a, prefix = _expand(seed)
    pub = _compress(_mul(a, G))
    r = _hash_mod_l(prefix + message)
    big_r = _compress(_mul(r, G))
    k = _hash_mod_l(big_r + pub + message)
    s = (r + k * a) % L
    return big_r + s.to_bytes(32, "little")


def _self_test():
    """RFC 8032, 7.1, TEST 1: a wrong signer must not print vectors."""
    seed = bytes.fromhex(
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
    )
    pub = bytes.fromhex(
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    )
    sig = bytes.fromhex(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555"
        "fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    if public_key(seed) != pub or sign(seed, b"") != sig:
        sys.exit("ed25519 self-test against RFC 8032 failed")


# --- the canonical codec --------------------------------------------------


def u16(v):
    return struct.pack("<H", v)


def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


def f32(v):
    """`F32Bits` of the f32 nearest to `v`: its IEEE bits as a u32."""
    return struct.pack("<f", v)


def vec(items):
    return u64(len(items)) + b"".join(items)


def variant(index, *fields):
    return u32(index) + b"".join(fields)


def b32(byte):
    return bytes([byte]) * 32


def sha256(data):
    return hashlib.sha256(data).digest()


def sha256d(data):
    return sha256(sha256(data))


# --- the hashes -----------------------------------------------------------

SIGNING_TAG = b"gradchain/tx/v1"
DEVNET_CHAIN_ID = 0x64657601
FAUCET_SEED = b"gradchain devnet faucet seed 001"
COIN = 100_000_000
PREMINE = 1_000_000 * COIN
GENESIS_TIME = 1_767_225_600


def signed_transfer(seed, chain_id, nonce, fee, to, amount):
    """encode(SignedTx) of a transfer signed with the key of `seed`."""
    sender = public_key(seed)
    # TxBody { from, nonce, fee, kind: TxKind::Transfer (variant 0) { to, amount } }
    body = sender + u64(nonce) + u64(fee) + variant(0, to, u64(amount))
    signature = sign(seed, SIGNING_TAG + u32(chain_id) + body)
    return body + signature


def txid(encoded_signed_tx):
    return sha256d(b"tx" + encoded_signed_tx)


def merkle_root(ids):
    level = [sha256d(b"\x00" + i) for i in ids]
    if not level:
        return sha256d(b"\x02")
    while len(level) > 1:
        nxt = []
        for k in range(0, len(level), 2):
            pair = level[k : k + 2]
            nxt.append(sha256d(b"\x01" + pair[0] + pair[1]) if len(pair) == 2 else pair[0])
        level = nxt
    return level[0]


def segments_root(leaves):
    level = [
        sha256(b"gradchain/segment-leaf/v1" + u32(j) + state + loss)
        for j, (state, loss) in enumerate(leaves)
    ]
    if not level:
        return bytes(32)
    while len(level) > 1:
        nxt = []
        for k in range(0, len(level), 2):
            pair = level[k : k + 2]
            if len(pair) == 2:
                nxt.append(sha256(b"gradchain/segment-node/v1" + pair[0] + pair[1]))
            else:
                nxt.append(pair[0])
        level = nxt
    return level[0]


def tree_root(leaves, depth=0):
    """`leaves`: a list of (key as a 256-bit integer, key bytes, value)."""
    if not leaves:
        return bytes(32)
    if len(leaves) == 1:
        _, key, value = leaves[0]
        return sha256(b"\x00" + key + value)
    bit = 255 - depth
    left = [leaf for leaf in leaves if not (leaf[0] >> bit) & 1]
    right = [leaf for leaf in leaves if (leaf[0] >> bit) & 1]
    return sha256(b"\x01" + tree_root(left, depth + 1) + tree_root(right, depth + 1))


def state_root(accounts, jobs):
    """`accounts`: {address: (balance, nonce)}; `jobs`: {id: encoded JobRecord}."""
    leaves = []
    for address, (balance, nonce) in accounts.items():
        key = sha256(b"gradchain/state/account/" + address)
        leaves.append((int.from_bytes(key, "big"), key, sha256(u64(balance) + u64(nonce))))
    for job_id, encoded in jobs.items():
        key = sha256(b"gradchain/state/job/" + job_id)
        leaves.append((int.from_bytes(key, "big"), key, sha256(encoded)))
    return tree_root(leaves)


def worker_seed(job, worker, base_seed):
    digest = sha256(b"gradchain/worker-seed/v1" + job + worker + u64(base_seed))
    return struct.unpack("<Q", digest[:8])[0]


def header(version, prev, merkle, state, time, bits, nonce):
    out = u32(version) + prev + merkle + state + u32(time) + u32(bits) + u64(nonce)
    assert len(out) == 116
    return out


def genesis_hash(bits):
    faucet = public_key(FAUCET_SEED)
    # Coinbase { height, miner, amount }
    coinbase = u64(0) + faucet + u64(PREMINE)
    merkle = merkle_root([sha256d(b"cb" + coinbase)])
    state = state_root({faucet: (PREMINE, 0)}, {})
    return sha256d(header(1, bytes(32), merkle, state, GENESIS_TIME, bits, 0))


# --- the fixed inputs (the same as in protocol/tests/golden.rs) -----------


def golden_spec():
    """encode(JobSpec) of the golden job."""
    return (
        # dataset: DatasetRef { digest, rows: u32, features: u32 }
        b32(0x07) + u32(150) + u32(4)
        # task: Task::Classification (0) { classes: u32 }
        + variant(0, u32(3))
        # split: Split { validation_permille: u16, test_permille: u16 }
        + u16(100) + u16(200)
        # model: ModelSpec { hidden: Vec<u32>, activation: Activation::Relu (0) }
        + vec([u32(16), u32(8)]) + variant(0)
        # loss: Loss::CrossEntropy (0)
        + variant(0)
        # optimizer: Optimizer::Adam (1) { lr, beta1, beta2, eps }
        + variant(1, f32(0.01), f32(0.9), f32(0.999), f32(1e-8))
        # l1, l2
        + f32(0.0) + f32(0.001)
        # batch_size u32, epochs u32, base_seed u64, segments u32, engine_version u32
        + u32(16) + u32(20) + u64(42) + u32(8) + u32(2)
        # acceptance: Acceptance::MinAccuracy (0) { ppm: u32 }
        + variant(0, u32(900_000))
        # bond: Amount (u64), challenge_window: u32
        + u64(30_000) + u32(24)
    )


def golden_jobs():
    """The golden state's two jobs, as {id: encode(JobRecord)}."""
    spec = golden_spec()
    open_job = (
        # JobRecord { poster, spec, bounty, posted_at, expires_at, status, challenges }
        b32(0x09) + spec + u64(1_000) + u64(3) + u64(50)
        # JobStatus::Open (0)
        + variant(0)
        + vec([])
    )
    result = (
        # JobResult { weights, segments_root, train_loss, metric }
        b32(0x44) + b32(0x55) + f32(0.125)
        # TestMetric::Accuracy (0) { correct: u32, total: u32 }
        + variant(0, u32(29), u32(30))
    )
    pending_job = (
        b32(0x0a) + spec + u64(2_000) + u64(4) + u64(60)
        # JobStatus::Pending (1) { worker, result, tx, height, settles_at, bond }
        + variant(1, b32(0x0b), result, b32(0x0c), u64(6), u64(30), u64(30_000))
        # challenges: [Challenge { challenger, worker, segment: u32, tx, height,
        #              outcome: ChallengeOutcome::Refuted (1) }]
        + vec([b32(0x0d) + b32(0x0b) + u32(3) + b32(0x0e) + u64(7) + variant(1)])
    )
    return {b32(0x31): open_job, b32(0x30): pending_job}


def main():
    _self_test()
    out = []

    # The fixed transfer: key seed [0x11; 32], nonce 7, fee 3, to [0x22; 32],
    # amount 1_000_000, signed for devnet.
    tx = signed_transfer(b32(0x11), DEVNET_CHAIN_ID, 7, 3, b32(0x22), 1_000_000)
    out.append(("transfer_signature", tx[-64:]))
    out.append(("transfer_txid", txid(tx)))

    # Merkle roots over the ids [i; 32], i = 0..n.
    for n in (0, 1, 2, 3, 7):
        out.append((f"merkle_root_{n}", merkle_root([b32(i) for i in range(n)])))

    # Nine segment leaves: state [0x60 + i; 32], loss i / 8.
    leaves = [(b32(0x60 + i), f32(i / 8)) for i in range(9)]
    out.append(("segments_root_9", segments_root(leaves)))

    # Accounts [0x02; 32] and [0x01; 32] (given in that order), two jobs.
    accounts = {b32(0x02): (5, 3), b32(0x01): (1_000, 0)}
    out.append(("state_root_accounts", state_root(accounts, {})))
    out.append(("state_root_with_jobs", state_root(accounts, golden_jobs())))

    out.append(("genesis_devnet", genesis_hash(0x1D180000)))
    out.append(("genesis_regtest", genesis_hash(0x207FFFFF)))

    seed = worker_seed(b32(0x05), b32(0x06), 42)
    for name, value in out:
        print(f"{name} {value.hex()}")
    print(f"worker_seed {seed:016x}")


if __name__ == "__main__":
    main()

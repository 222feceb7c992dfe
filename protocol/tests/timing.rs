//! Block timing by hand: `median_time_past` on timestamp lists whose median
//! is read off by eye, and the devnet difficulty schedule through
//! `expected_bits` (the function header validation calls) on header chains
//! built with chosen times, with known answers derived from the ASERT
//! definition: on schedule the bits stay, one half-life ahead the target
//! halves, one half-life behind it doubles, far behind it is clamped to the
//! proof-of-work limit.
#![allow(
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use protocol::params::Retarget;
use protocol::validation::{
    check_header, expected_bits, median_time_past, HeaderContext, HeaderError,
};
use protocol::{BlockHash, ChainParams, CompactTarget, Header, Height, MerkleRoot, StateRoot};

#[test]
fn median_time_past_of_hand_made_lists() {
    // No blocks: zero, so any time is after it.
    assert_eq!(median_time_past(&[]), 0);
    assert_eq!(median_time_past(&[7]), 7);
    // Odd count, unsorted: the middle of 10, 20, 30.
    assert_eq!(median_time_past(&[30, 10, 20]), 20);
    // Even count: the upper of the two middle values of 10, 20, 30, 40.
    assert_eq!(median_time_past(&[40, 10, 30, 20]), 30);
    // Repeated times count once each: 1, 5, 5, 5.
    assert_eq!(median_time_past(&[5, 5, 1, 5]), 5);
    // Eleven unsorted: sorted 1 2 3 4 5 8 9 50 60 70 100, the sixth is 8.
    let eleven = [5, 100, 3, 9, 50, 1, 70, 2, 60, 8, 4];
    assert_eq!(median_time_past(&eleven), 8);
    // Only the last eleven count: two older, larger times in front change
    // nothing (over all thirteen the median would be 9).
    let thirteen: Vec<u32> = [1000, 1000].iter().chain(&eleven).copied().collect();
    assert_eq!(median_time_past(&thirteen), 8);
    // ... while the same two at the end push the window's median up.
    let later: Vec<u32> = eleven.iter().chain(&[1000, 1000]).copied().collect();
    // Window: 3 9 50 1 70 2 60 8 4 1000 1000, sorted 1 2 3 4 8 9 50 60 70 1000 1000.
    assert_eq!(median_time_past(&later), 9);
}

/// Devnet's schedule, which the known answers below are derived for.
fn devnet() -> ChainParams {
    let params = ChainParams::devnet();
    assert_eq!(
        params.retarget,
        Retarget::Asert {
            spacing: 5,
            half_life: 120
        },
        "the known answers assume devnet's 5 s spacing and 120 s half-life"
    );
    assert_eq!(params.genesis_bits, CompactTarget(0x1d18_0000));
    assert_eq!(params.pow_limit, CompactTarget(0x207f_ffff));
    params
}

/// A header chain from genesis: block `k` (from 1) has time `times[k-1]`
/// and carries the bits `expected_bits` requires of it. Proof of work is
/// left out: these headers exist to carry times and bits.
fn chain_with_times(params: &ChainParams, times: &[u32]) -> Vec<Header> {
    let mut headers = vec![params.genesis_block().unwrap().header];
    for &time in times {
        let bits = next_bits(params, &headers);
        let parent = headers.last().unwrap();
        headers.push(Header {
            version: params.block_version,
            prev: parent.hash(),
            merkle_root: MerkleRoot::ZERO,
            state_root: StateRoot::ZERO,
            time,
            bits,
            nonce: 0,
        });
    }
    headers
}

/// The bits the block after `headers`' last must carry.
fn next_bits(params: &ChainParams, headers: &[Header]) -> CompactTarget {
    let parent = headers.last().unwrap();
    let height = Height(headers.len() as u64 - 1);
    expected_bits(params, height, parent.time, headers.get(1).map(|h| h.time)).unwrap()
}

/// Times for blocks `1..=n`, block 1 at `start` and `gap` seconds apart.
fn evenly(start: u32, gap: u32, n: u32) -> Vec<u32> {
    (0..n).map(|k| start + gap * k).collect()
}

fn start(params: &ChainParams) -> u32 {
    // Block 1 is mined a while after genesis: the schedule starts at it.
    params.genesis_time + 1000
}

#[test]
fn on_schedule_the_bits_stay_at_the_genesis_bits() {
    let params = devnet();
    let headers = chain_with_times(&params, &evenly(start(&params), 5, 60));
    for header in &headers[1..] {
        assert_eq!(header.bits, params.genesis_bits, "at time {}", header.time);
    }
    assert_eq!(next_bits(&params, &headers), params.genesis_bits);
}

#[test]
fn ahead_of_schedule_the_difficulty_rises() {
    let params = devnet();
    // One second apart instead of five: the parent at height h is
    // 4·(h − 1) s ahead of schedule, a half-life (120 s) at h = 31. Block
    // 2 follows block 1, the anchor, on time; from block 3 on, the target
    // tightens.
    let headers = chain_with_times(&params, &evenly(start(&params), 1, 31));
    assert_eq!(headers[2].bits, params.genesis_bits);
    let genesis = params.genesis_bits.to_target().unwrap();
    let targets: Vec<_> = headers[3..]
        .iter()
        .map(|h| h.bits.to_target().unwrap())
        .collect();
    assert!(targets.iter().all(|t| *t < genesis), "{targets:?}");
    assert!(
        targets.windows(2).all(|w| w[1] <= w[0]),
        "the target never eases while the chain runs ahead: {targets:?}"
    );
    // Half of 0x180000·256^26 is 0x0c0000·256^26.
    assert_eq!(next_bits(&params, &headers), CompactTarget(0x1d0c_0000));
}

#[test]
fn behind_schedule_the_difficulty_falls() {
    let params = devnet();
    // Ten seconds apart instead of five: the parent at height h is
    // 5·(h − 1) s behind schedule, a half-life at h = 25.
    let headers = chain_with_times(&params, &evenly(start(&params), 10, 25));
    assert_eq!(headers[2].bits, params.genesis_bits);
    let genesis = params.genesis_bits.to_target().unwrap();
    let targets: Vec<_> = headers[3..]
        .iter()
        .map(|h| h.bits.to_target().unwrap())
        .collect();
    assert!(targets.iter().all(|t| *t > genesis), "{targets:?}");
    assert!(
        targets.windows(2).all(|w| w[1] >= w[0]),
        "the target never tightens while the chain lags: {targets:?}"
    );
    // Twice 0x180000·256^26 is 0x300000·256^26.
    assert_eq!(next_bits(&params, &headers), CompactTarget(0x1d30_0000));
}

#[test]
fn back_on_schedule_the_bits_return_to_the_genesis_bits() {
    let params = devnet();
    // Twenty-one blocks a second apart (80 s ahead at height 21), then
    // nine seconds apart until the parent is on schedule again: 40 spacings
    // after block 1 at height 41.
    let mut times = evenly(start(&params), 1, 21);
    let last = *times.last().unwrap();
    times.extend((1..=20).map(|k| last + 9 * k));
    let headers = chain_with_times(&params, &times);
    assert_eq!(headers.len(), 42);
    assert_eq!(headers[41].time, start(&params) + 5 * 40);
    assert!(
        headers[21].bits.to_target().unwrap() < params.genesis_bits.to_target().unwrap(),
        "the fast stretch raised the difficulty"
    );
    assert_eq!(next_bits(&params, &headers), params.genesis_bits);
}

#[test]
fn far_behind_schedule_the_target_is_clamped_to_the_limit() {
    let params = devnet();
    let s = start(&params);
    // Block 2 fifty minutes late: 2995 s behind, about 25 half-lives, a
    // target near 2^253.5, still under the limit of about 2^255.
    let headers = chain_with_times(&params, &[s, s + 3000]);
    let bits = next_bits(&params, &headers);
    assert_ne!(bits, params.pow_limit);
    assert!(bits.to_target().unwrap() < params.pow_limit.to_target().unwrap());
    assert!(bits.to_target().unwrap() > params.genesis_bits.to_target().unwrap());
    // An hour late: about 30 half-lives would give 2^258.5, so the limit.
    let mut headers = chain_with_times(&params, &[s, s + 3600]);
    assert_eq!(next_bits(&params, &headers), params.pow_limit);

    // Header validation requires exactly those bits: a block at the limit
    // (cheap to mine) is accepted, the same block claiming the genesis
    // bits is refused.
    let parent = *headers.last().unwrap();
    let times: Vec<u32> = headers.iter().map(|h| h.time).collect();
    let context = HeaderContext {
        parent: parent.hash(),
        expected_bits: next_bits(&params, &headers),
        median_time_past: median_time_past(&times),
        now: parent.time + 5,
    };
    let mut child = Header {
        prev: parent.hash(),
        time: parent.time + 5,
        bits: params.pow_limit,
        ..parent
    };
    let target = child.bits.to_target().unwrap();
    let mut hasher = child.hasher();
    child.nonce = (0..)
        .find(|n| target.is_met_by(&BlockHash(hasher.hash_with_nonce(*n))))
        .unwrap();
    check_header(&child.seal(), &context, &params).unwrap();
    let claimed = Header {
        bits: params.genesis_bits,
        ..child
    };
    assert_eq!(
        check_header(&claimed.seal(), &context, &params),
        Err(HeaderError::WrongTargetBits {
            expected: params.pow_limit,
            got: params.genesis_bits
        })
    );
    headers.push(child);
    // The limit is where it stays while the chain lags that far.
    assert_eq!(next_bits(&params, &headers), params.pow_limit);
}

#[test]
fn block_one_carries_the_genesis_bits_and_later_blocks_need_the_anchor() {
    let params = devnet();
    let genesis = params.genesis_block().unwrap().header;
    // The child of genesis gets the genesis bits whenever it comes.
    for late in [0, 5, 100_000] {
        assert_eq!(
            expected_bits(&params, Height::GENESIS, genesis.time + late, None).unwrap(),
            params.genesis_bits
        );
    }
    assert_eq!(
        expected_bits(&params, Height(1), genesis.time + 5, None),
        Err(HeaderError::MissingAnchor)
    );
}

#[test]
fn regtest_always_requires_the_limit() {
    let params = ChainParams::regtest();
    let s = start(&params);
    for headers in [
        chain_with_times(&params, &evenly(s, 1, 40)),
        chain_with_times(&params, &evenly(s, 600, 40)),
    ] {
        assert!(headers[1..].iter().all(|h| h.bits == params.pow_limit));
        assert_eq!(next_bits(&params, &headers), params.pow_limit);
    }
}

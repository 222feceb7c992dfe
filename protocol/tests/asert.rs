//! ASERT difficulty: the aserti3-2d reference vectors (run01..run10, produced
//! by Bitcoin Cash Node's C++ code), the same vectors scaled to gradchain's
//! seconds-scale units, exact known answers that follow from the definition,
//! and bounds that hold for arbitrary timestamp sequences.
#![allow(
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use primitive_types::U256;
use proptest::prelude::*;
use protocol::asert::{next_target, AsertAnchor, AsertParams};
use protocol::{CompactTarget, Target};

struct Vector {
    name: String,
    anchor_height: u64,
    anchor_parent_time: i64,
    anchor_bits: u32,
    rows: Vec<(u64, i64, u32)>,
}

fn parse_hex_u32(text: &str) -> u32 {
    u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).unwrap()
}

fn load(name: &str) -> Vector {
    let path = format!("{}/tests/data/asert/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut vector = Vector {
        name: name.into(),
        anchor_height: 0,
        anchor_parent_time: 0,
        anchor_bits: 0,
        rows: Vec::new(),
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("##") {
            let (key, value) = rest.split_once(':').unwrap();
            match key.trim() {
                "anchor height" => vector.anchor_height = value.trim().parse().unwrap(),
                "anchor ancestor time" => vector.anchor_parent_time = value.trim().parse().unwrap(),
                "anchor nBits" => vector.anchor_bits = parse_hex_u32(value),
                _ => {}
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let cols: Vec<&str> = line.split_whitespace().collect();
            vector.rows.push((
                cols[1].parse().unwrap(),
                cols[2].parse().unwrap(),
                parse_hex_u32(cols[3]),
            ));
        }
    }
    vector
}

fn all_vectors() -> Vec<Vector> {
    (1..=10).map(|i| load(&format!("run{i:02}"))).collect()
}

fn reference_params() -> AsertParams {
    AsertParams {
        spacing: 600,
        half_life: 172_800,
        pow_limit: CompactTarget(0x1d00_ffff).to_target().unwrap(),
    }
}

#[test]
fn reproduces_every_reference_vector() {
    let params = reference_params();
    let mut checked = 0;
    for vector in all_vectors() {
        let anchor = AsertAnchor {
            height: vector.anchor_height,
            parent_time: vector.anchor_parent_time,
            target: CompactTarget(vector.anchor_bits).to_target().unwrap(),
        };
        for (i, (height, time, bits)) in vector.rows.iter().enumerate() {
            let got = next_target(&params, &anchor, *height, *time)
                .unwrap()
                .to_compact();
            assert_eq!(got, CompactTarget(*bits), "{} row {}", vector.name, i + 1);
            checked += 1;
        }
    }
    assert_eq!(checked, 3000, "the ten files hold 3000 rows");
}

/// Dividing every time offset, the spacing and the half-life by the same
/// factor leaves the exponent's rational value unchanged; where the offsets
/// divide exactly, the truncated exponent and so the target are identical.
/// Scaling 600 s / 2 days by 120 gives 5 s blocks (the devnet spacing) with a
/// 24-minute half-life.
#[test]
fn scaled_vectors_reproduce_in_seconds_scale_units() {
    let scale = 120;
    let mut params = reference_params();
    params.spacing /= scale;
    params.half_life /= scale;
    let mut checked = 0;
    for vector in all_vectors() {
        let exact = vector
            .rows
            .iter()
            .all(|(_, t, _)| (t - vector.anchor_parent_time) % scale == 0);
        if !exact || vector.anchor_parent_time % scale != 0 {
            continue;
        }
        let anchor = AsertAnchor {
            height: vector.anchor_height,
            parent_time: vector.anchor_parent_time / scale,
            target: CompactTarget(vector.anchor_bits).to_target().unwrap(),
        };
        for (height, time, bits) in &vector.rows {
            let got = next_target(&params, &anchor, *height, time / scale).unwrap();
            assert_eq!(
                got.to_compact(),
                CompactTarget(*bits),
                "{} scaled",
                vector.name
            );
            checked += 1;
        }
    }
    assert!(checked >= 200, "only {checked} rows were exactly scalable");
}

fn devnet_like() -> (AsertParams, AsertAnchor) {
    let params = AsertParams {
        spacing: 5,
        half_life: 120,
        pow_limit: Target(U256::MAX >> 1),
    };
    let anchor = AsertAnchor {
        height: 1,
        parent_time: 1_000_000,
        target: Target(U256::one() << 200),
    };
    (params, anchor)
}

#[test]
fn known_answers_from_the_definition() {
    let (params, anchor) = devnet_like();
    // On schedule: parent at height 1 + n, time anchor + 5 * (n + 1).
    for n in [0u64, 1, 10, 1000] {
        let t = anchor.parent_time + 5 * (n as i64 + 1);
        assert_eq!(
            next_target(&params, &anchor, 1 + n, t).unwrap(),
            anchor.target
        );
    }
    // Exactly one half-life late doubles the target; early halves it.
    let on_time = anchor.parent_time + 5 * 11;
    let late = next_target(&params, &anchor, 11, on_time + 120).unwrap();
    assert_eq!(late.0, anchor.target.0 << 1);
    let early = next_target(&params, &anchor, 11, on_time - 240).unwrap();
    assert_eq!(early.0, anchor.target.0 >> 2);
    // Far behind schedule clamps to the limit; far ahead bottoms out at 1.
    assert_eq!(
        next_target(&params, &anchor, 11, on_time + 120 * 300).unwrap(),
        params.pow_limit
    );
    assert_eq!(
        next_target(&params, &anchor, 100_000, anchor.parent_time)
            .unwrap()
            .0,
        U256::one()
    );
}

#[test]
fn parent_below_the_anchor_is_an_error() {
    let (params, anchor) = devnet_like();
    assert!(next_target(&params, &anchor, 0, anchor.parent_time).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// For any sequence of solve times (including negative ones), every
    /// target stays in [1, limit] and a later parent never gets a harder
    /// target than an earlier time at the same height.
    #[test]
    fn stays_within_bounds(
        solvetimes in prop::collection::vec(-3_600i64..100_000, 1..60),
        anchor_shift in 0u32..250,
    ) {
        let (params, mut anchor) = devnet_like();
        anchor.target = Target(U256::one() << anchor_shift);
        let mut time = anchor.parent_time + 5;
        for (i, solvetime) in solvetimes.iter().enumerate() {
            time += solvetime;
            let height = 1 + i as u64;
            let target = next_target(&params, &anchor, height, time).unwrap();
            prop_assert!(target.0 >= U256::one());
            prop_assert!(target <= params.pow_limit);
            let later = next_target(&params, &anchor, height, time + 1).unwrap();
            prop_assert!(later >= target);
        }
    }

    /// Extreme heights and times never panic or overflow.
    #[test]
    fn extreme_inputs_are_handled(height in any::<u64>(), time in any::<i64>(), bits in any::<u32>()) {
        let (params, mut anchor) = devnet_like();
        if let Ok(target) = CompactTarget(bits).to_target() {
            anchor.target = target;
        }
        anchor.height = 0;
        if let Ok(target) = next_target(&params, &anchor, height, time) {
            prop_assert!(target <= params.pow_limit && target.0 >= U256::one());
        }
    }
}

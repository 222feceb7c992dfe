//! Committed training segments: how a job's optimizer steps are cut into
//! segments, the leaf that commits to the state after each one, and the
//! Merkle tree over those leaves that a result carries and a fraud proof
//! opens.
//!
//! A job of `T` steps and `n` segments has leaves `0..=n`: leaf 0 commits to
//! the state `S_0` derived from the worker's seed, leaf `j` to the state
//! `S_j` after segment `j` and to that segment's mean training loss. The
//! tree tags leaves and inner nodes apart and promotes an odd last node, as
//! the transaction tree does, so two leaf lists never share a root. This
//! module must never accept a path that does not lead from the leaf at its
//! index to the root.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::hash::sha256_parts;
use crate::types::{Digest, F32Bits};

/// Domain tag of a segment leaf.
const LEAF_TAG: &[u8] = b"gradchain/segment-leaf/v1";
/// Domain tag of an inner node.
const NODE_TAG: &[u8] = b"gradchain/segment-node/v1";

/// Fewest segments a job may have.
pub const MIN_SEGMENTS: u32 = 8;
/// Most segments a job may have.
pub const MAX_SEGMENTS: u32 = 1024;
/// Segments of a job unless its poster asks otherwise.
pub const DEFAULT_SEGMENTS: u32 = 64;
/// Longest Merkle path: `ceil(log2(MAX_SEGMENTS + 1))`.
pub const MAX_PATH_LEN: usize = 11;

/// The commitment to one state: its digest and the mean training loss of
/// the segment that led to it (0 for the initial state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentLeaf {
    /// SHA-256 of the state's canonical bytes.
    pub state: Digest,
    /// Mean training loss over the segment's steps.
    pub loss: F32Bits,
}

/// The steps of segment `index` (1-based) of a run of `total_steps` steps cut
/// into `segments` parts: `(index-1)·T/n .. index·T/n`, so segments differ in
/// length by at most one step and cover every step exactly once. `None` when
/// `index` is outside `1..=segments`.
pub fn segment_steps(total_steps: u64, segments: u32, index: u32) -> Option<Range<u64>> {
    if index == 0 || index > segments {
        return None;
    }
    let n = u128::from(segments);
    let t = u128::from(total_steps);
    let start = t
        .checked_mul(u128::from(index.checked_sub(1)?))?
        .checked_div(n)?;
    let end = t.checked_mul(u128::from(index))?.checked_div(n)?;
    Some(u64::try_from(start).ok()?..u64::try_from(end).ok()?)
}

/// `H(tag ‖ index ‖ state ‖ loss)`, integers little-endian.
pub fn leaf_hash(index: u32, leaf: &SegmentLeaf) -> Digest {
    Digest(sha256_parts(&[
        LEAF_TAG,
        &index.to_le_bytes(),
        leaf.state.as_bytes(),
        &leaf.loss.0.to_le_bytes(),
    ]))
}

fn node_hash(left: &Digest, right: &Digest) -> Digest {
    Digest(sha256_parts(&[NODE_TAG, left.as_bytes(), right.as_bytes()]))
}

fn next_level(level: &[Digest]) -> Vec<Digest> {
    level
        .chunks(2)
        .map(|pair| match pair {
            [left, right] => node_hash(left, right),
            [single] => *single,
            _ => Digest::ZERO,
        })
        .collect()
}

fn leaf_level(leaves: &[SegmentLeaf]) -> Vec<Digest> {
    leaves
        .iter()
        .zip(0u32..)
        .map(|(leaf, index)| leaf_hash(index, leaf))
        .collect()
}

/// The root over `leaves` (leaf `j` at index `j`). An empty list has the
/// root of zeros; a valid result never has one.
pub fn segments_root(leaves: &[SegmentLeaf]) -> Digest {
    let mut level = leaf_level(leaves);
    if level.is_empty() {
        return Digest::ZERO;
    }
    while level.len() > 1 {
        level = next_level(&level);
    }
    level.first().copied().unwrap_or(Digest::ZERO)
}

/// The siblings from leaf `index` up to the root, bottom first; levels where
/// the node is promoted contribute nothing. `None` when `index` is out of
/// range.
pub fn merkle_path(leaves: &[SegmentLeaf], index: u32) -> Option<Vec<Digest>> {
    let mut position = usize::try_from(index).ok()?;
    let mut level = leaf_level(leaves);
    if position >= level.len() {
        return None;
    }
    let mut path = Vec::new();
    while level.len() > 1 {
        let sibling = position ^ 1;
        if let Some(node) = level.get(sibling) {
            path.push(*node);
        }
        level = next_level(&level);
        position /= 2;
    }
    Some(path)
}

/// Whether `path` leads from `leaf` at `index`, in a tree of `count` leaves,
/// to `root`. Every sibling must be used: a path that is too long or too
/// short fails.
pub fn verify_path(
    root: &Digest,
    count: u32,
    index: u32,
    leaf: &SegmentLeaf,
    path: &[Digest],
) -> bool {
    if index >= count || path.len() > MAX_PATH_LEN {
        return false;
    }
    let mut node = leaf_hash(index, leaf);
    let mut position = index;
    let mut width = count;
    let mut siblings = path.iter();
    while width > 1 {
        let has_sibling = position % 2 == 1 || position.saturating_add(1) < width;
        if has_sibling {
            let Some(sibling) = siblings.next() else {
                return false;
            };
            node = if position % 2 == 1 {
                node_hash(sibling, &node)
            } else {
                node_hash(&node, sibling)
            };
        }
        position /= 2;
        width = width.div_ceil(2);
    }
    siblings.next().is_none() && node == *root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(count: u32) -> Vec<SegmentLeaf> {
        (0..count)
            .map(|i| SegmentLeaf {
                state: Digest([i as u8; 32]),
                loss: F32Bits::from_f32(i as f32 / 10.0),
            })
            .collect()
    }

    #[test]
    fn segments_cover_every_step_once_and_differ_by_at_most_one() {
        for (total, n) in [(100u64, 8u32), (64, 64), (1000, 7), (9, 8), (1 << 40, 1024)] {
            let mut next = 0;
            let mut lengths = Vec::new();
            for j in 1..=n {
                let range = segment_steps(total, n, j).unwrap();
                assert_eq!(range.start, next);
                next = range.end;
                lengths.push(range.end - range.start);
            }
            assert_eq!(next, total);
            let (min, max) = (lengths.iter().min().unwrap(), lengths.iter().max().unwrap());
            assert!(max - min <= 1, "{total}/{n}: {min}..{max}");
        }
        assert_eq!(segment_steps(10, 8, 0), None);
        assert_eq!(segment_steps(10, 8, 9), None);
    }

    #[test]
    fn every_path_verifies_and_nothing_else_does() {
        for count in [1u32, 2, 3, 7, 9, 65, 1025] {
            let leaves = leaves(count);
            let root = segments_root(&leaves);
            for index in 0..count {
                let leaf = leaves[index as usize];
                let path = merkle_path(&leaves, index).unwrap();
                assert!(path.len() <= MAX_PATH_LEN);
                assert!(verify_path(&root, count, index, &leaf, &path));
                // Another index, a changed leaf, a changed sibling, a longer
                // or shorter path, or another leaf count: all refused.
                if count > 1 {
                    let other = (index + 1) % count;
                    assert!(!verify_path(&root, count, other, &leaf, &path));
                }
                let mut changed = leaf;
                changed.loss = F32Bits(changed.loss.0 ^ 1);
                assert!(!verify_path(&root, count, index, &changed, &path));
                if let Some(first) = path.first() {
                    let mut bad = path.clone();
                    bad[0] = Digest([first.0[0] ^ 1; 32]);
                    assert!(!verify_path(&root, count, index, &leaf, &bad));
                    assert!(!verify_path(&root, count, index, &leaf, &path[1..]));
                }
                let mut longer = path.clone();
                longer.push(root);
                assert!(!verify_path(&root, count, index, &leaf, &longer));
            }
            assert_eq!(merkle_path(&leaves, count), None);
        }
    }

    #[test]
    fn roots_differ_when_leaves_differ_or_shift() {
        let a = leaves(5);
        let mut b = a.clone();
        b.push(a[4]);
        assert_ne!(segments_root(&a), segments_root(&b));
        let mut c = a.clone();
        c.swap(1, 2);
        assert_ne!(segments_root(&a), segments_root(&c));
    }
}

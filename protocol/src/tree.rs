//! The state commitment: a binary Merkle tree over 256-bit keys, updated
//! in O(changed × depth) hashes, with proofs a light client can check
//! against a header's state root.
//!
//! Each entry of the state is a leaf `(key, value hash)`, its key a hash of
//! the entry's identity, so keys spread evenly and the tree's depth is
//! about log2 of the number of entries. The tree is defined over the set of
//! leaves alone, whatever order they were inserted in:
//!
//! - an empty subtree hashes to 32 zero bytes ([`EMPTY`]);
//! - a subtree holding exactly one leaf hashes to that leaf,
//!   `SHA-256(0x00 ‖ key ‖ value hash)`, at whatever depth it sits (a
//!   shortcut: no chain of single-child nodes above a lone leaf);
//! - a subtree holding two or more leaves is a node,
//!   `SHA-256(0x01 ‖ left ‖ right)`, its children the subtrees whose next
//!   key bit (most significant first) is 0 and 1.
//!
//! The root is the hash of the whole tree. In memory the tree is a radix
//! tree: a branch only where leaves differ, each branch keeping its hash
//! until a leaf below it changes. Changing a leaf walks and clears one path
//! (about log2 of the entries deep), so a root after a block rehashes only
//! the paths of the entries the block changed.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// A key: 256 bits, most significant bit of byte 0 first.
pub type Key = [u8; 32];

/// A 32-byte hash.
pub type Hash = [u8; 32];

/// The hash of an empty subtree.
pub const EMPTY: Hash = [0; 32];

const LEAF_TAG: u8 = 0x00;
const NODE_TAG: u8 = 0x01;

/// Deepest level a node can sit at: two distinct keys share at most 255
/// leading bits.
const KEY_BITS: u16 = 256;

/// The hash of a leaf.
pub fn leaf_hash(key: &Key, value: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([LEAF_TAG]);
    hasher.update(key);
    hasher.update(value);
    hasher.finalize().into()
}

/// The hash of a node over two subtrees.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([NODE_TAG]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// Bit `index` of `key`, most significant first.
fn bit(key: &Key, index: u16) -> bool {
    let byte = usize::from(index >> 3);
    let mask = 0x80u8 >> (index & 7);
    key.get(byte).is_some_and(|b| b & mask != 0)
}

/// Leading bits `a` and `b` share.
fn common_prefix(a: &Key, b: &Key) -> u16 {
    let mut bits = 0u16;
    for (x, y) in a.iter().zip(b) {
        let diff = x ^ y;
        if diff == 0 {
            bits = bits.saturating_add(8);
        } else {
            return bits.saturating_add(u16::try_from(diff.leading_zeros()).unwrap_or(8));
        }
    }
    bits
}

/// A subtree in memory: a lone leaf, or a branch where its leaves first
/// differ (the levels above it where they agree hold no other leaf, and
/// hash as a node with one empty child each).
#[derive(Clone)]
enum Node {
    Leaf {
        key: Key,
        value: Hash,
    },
    Branch {
        /// The first bit at which the branch's leaves differ.
        split: u16,
        /// Any of its leaves' keys: the bits before `split` they share.
        prefix: Key,
        /// The subtrees whose bit `split` is 0 and 1.
        children: Box<[Node; 2]>,
        /// The node hash at depth `split`, while no leaf below changed.
        hash: Option<Hash>,
    },
}

impl Node {
    fn leaf_key(&self) -> &Key {
        match self {
            Self::Leaf { key, .. } => key,
            Self::Branch { prefix, .. } => prefix,
        }
    }

    /// The hash of this subtree seen from `depth` (at most its split):
    /// its own hash, wrapped in one single-child node per level between.
    fn hash_at(&mut self, depth: u16) -> Hash {
        match self {
            Self::Leaf { key, value } => leaf_hash(key, value),
            Self::Branch {
                split,
                prefix,
                children,
                hash,
            } => {
                let own = match hash {
                    Some(known) => *known,
                    None => {
                        let next = split.saturating_add(1);
                        let [left, right] = &mut **children;
                        let computed = node_hash(&left.hash_at(next), &right.hash_at(next));
                        *hash = Some(computed);
                        computed
                    }
                };
                wrap(own, prefix, depth, *split)
            }
        }
    }

    /// Sets `key` to `value` in this subtree.
    fn insert(self, key: Key, value: Hash) -> Self {
        match self {
            Self::Leaf { key: found, .. } if found == key => Self::Leaf { key, value },
            old @ Self::Leaf { .. } => {
                let split = common_prefix(old.leaf_key(), &key);
                branch(split, old, Self::Leaf { key, value })
            }
            Self::Branch {
                split,
                prefix,
                mut children,
                hash,
            } => {
                let shared = common_prefix(&prefix, &key);
                if shared < split {
                    // The key leaves the branch's common prefix above it.
                    let old = Self::Branch {
                        split,
                        prefix,
                        children,
                        hash,
                    };
                    return branch(shared, old, Self::Leaf { key, value });
                }
                let side = usize::from(bit(&key, split));
                if let Some(child) = children.get_mut(side) {
                    let taken = std::mem::replace(child, Self::Leaf { key, value });
                    *child = taken.insert(key, value);
                }
                Self::Branch {
                    split,
                    prefix,
                    children,
                    hash: None,
                }
            }
        }
    }

    /// Removes `key` from this subtree; `None` when nothing is left.
    fn remove(self, key: &Key) -> Option<Self> {
        match self {
            Self::Leaf { key: found, .. } if found == *key => None,
            leaf @ Self::Leaf { .. } => Some(leaf),
            Self::Branch {
                split,
                prefix,
                children,
                hash,
            } => {
                if common_prefix(&prefix, key) < split {
                    return Some(Self::Branch {
                        split,
                        prefix,
                        children,
                        hash,
                    });
                }
                let [left, right] = *children;
                let (mine, other, right_side) = if bit(key, split) {
                    (right, left, true)
                } else {
                    (left, right, false)
                };
                match mine.remove(key) {
                    // One subtree left: it takes the branch's place.
                    None => Some(other),
                    Some(kept) => {
                        let children = if right_side {
                            [other, kept]
                        } else {
                            [kept, other]
                        };
                        Some(Self::Branch {
                            split,
                            prefix,
                            children: Box::new(children),
                            hash: None,
                        })
                    }
                }
            }
        }
    }
}

/// A branch at `split` over two subtrees that differ there.
fn branch(split: u16, a: Node, b: Node) -> Node {
    let prefix = *a.leaf_key();
    let children = if bit(&prefix, split) { [b, a] } else { [a, b] };
    Node::Branch {
        split,
        prefix,
        children: Box::new(children),
        hash: None,
    }
}

/// `own`, the hash of a node at depth `split`, as seen from `depth`: one
/// node with an empty sibling per level in between.
fn wrap(own: Hash, prefix: &Key, depth: u16, split: u16) -> Hash {
    let mut hash = own;
    let mut level = split;
    while level > depth {
        level = level.saturating_sub(1);
        hash = if bit(prefix, level) {
            node_hash(&EMPTY, &hash)
        } else {
            node_hash(&hash, &EMPTY)
        };
    }
    hash
}

/// The tree: its leaves, and a radix tree over them whose node hashes are
/// kept until a leaf below them changes. Changes wait in a queue until a
/// root or a proof is asked for: a state that is changed and rolled back
/// many times between two roots (the mempool checking transactions against
/// the tip) pays for its leaves' paths once, and only for leaves whose
/// value really changed.
#[derive(Default)]
pub struct StateTree {
    /// Behind a lock so that a shared state can compute its root (which
    /// applies the queued changes and fills in hashes).
    inner: Mutex<Inner>,
}

#[derive(Clone, Default)]
struct Inner {
    /// Every leaf, as of the last root.
    leaves: BTreeMap<Key, Hash>,
    /// The radix tree over `leaves`.
    root: Option<Node>,
    /// Changes since the last root, the latest per key.
    pending: BTreeMap<Key, Option<Hash>>,
}

impl Inner {
    /// Applies the queued changes to the leaves and the radix tree,
    /// skipping those that leave a leaf as it was.
    fn apply_pending(&mut self) {
        for (key, value) in std::mem::take(&mut self.pending) {
            if self.leaves.get(&key) == value.as_ref() {
                continue;
            }
            self.root = match (self.root.take(), value) {
                (None, Some(value)) => Some(Node::Leaf { key, value }),
                (None, None) => None,
                (Some(node), Some(value)) => Some(node.insert(key, value)),
                (Some(node), None) => node.remove(&key),
            };
            match value {
                Some(value) => {
                    self.leaves.insert(key, value);
                }
                None => {
                    self.leaves.remove(&key);
                }
            }
        }
    }
}

impl Clone for StateTree {
    fn clone(&self) -> Self {
        Self {
            inner: Mutex::new(self.lock().clone()),
        }
    }
}

impl std::fmt::Debug for StateTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateTree")
            .field("leaves", &self.len())
            .finish_non_exhaustive()
    }
}

impl StateTree {
    /// The tree with every queued change applied.
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The tree holds only what `set` put there and hashes derived from
        // it; a panic while it was held cannot leave a wrong hash behind.
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.apply_pending();
        inner
    }

    /// Number of leaves.
    pub fn len(&self) -> usize {
        self.lock().leaves.len()
    }

    /// Whether the tree has no leaf.
    pub fn is_empty(&self) -> bool {
        self.lock().leaves.is_empty()
    }

    /// Sets the leaf at `key` to `value` (a hash of the entry), or removes it
    /// when `None`; the leaf's path is updated and rehashed at the next root
    /// or proof.
    pub fn set(&mut self, key: Key, value: Option<Hash>) {
        self.inner
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pending
            .insert(key, value);
    }

    /// The root hash.
    pub fn root(&self) -> Hash {
        match self.lock().root.as_mut() {
            Some(node) => node.hash_at(0),
            None => EMPTY,
        }
    }

    /// The root computed from the leaves alone, straight from the
    /// definition, caching nothing: what [`StateTree::root`] must equal.
    pub fn root_from_scratch(&self) -> Hash {
        let leaves: Vec<(Key, Hash)> = self.lock().leaves.iter().map(|(k, v)| (*k, *v)).collect();
        subtree_from_scratch(&leaves, 0)
    }

    /// A proof of the leaf at `key`, or of its absence.
    pub fn proof(&self, key: &Key) -> Proof {
        let mut guard = self.lock();
        let mut siblings = Vec::new();
        let mut depth = 0u16;
        let mut node = guard.root.as_mut();
        while let Some(current) = node {
            let (split, prefix) = match current {
                Node::Leaf { key: found, value } => {
                    return Proof {
                        siblings,
                        leaf: Some((*found, *value)),
                    };
                }
                Node::Branch { split, prefix, .. } => (*split, *prefix),
            };
            // Levels where the branch's leaves all agree: the other side is
            // empty, unless the key turns away there.
            while depth < split {
                let next = depth.saturating_add(1);
                if bit(key, depth) != bit(&prefix, depth) {
                    siblings.push(current.hash_at(next));
                    return Proof {
                        siblings,
                        leaf: None,
                    };
                }
                siblings.push(EMPTY);
                depth = next;
            }
            let next = split.saturating_add(1);
            let Node::Branch { children, .. } = current else {
                break;
            };
            let [left, right] = &mut **children;
            let (mine, other) = if bit(key, split) {
                (right, left)
            } else {
                (left, right)
            };
            siblings.push(other.hash_at(next));
            depth = next;
            node = Some(mine);
        }
        Proof {
            siblings,
            leaf: None,
        }
    }
}

/// The hash at `depth` of the subtree holding `leaves` (sorted, sharing
/// their first `depth` bits), by the definition.
fn subtree_from_scratch(leaves: &[(Key, Hash)], depth: u16) -> Hash {
    match leaves {
        [] => EMPTY,
        [(key, value)] => leaf_hash(key, value),
        _ => {
            let split = leaves.partition_point(|(key, _)| !bit(key, depth));
            let (left, right) = leaves.split_at(split);
            let next = depth.saturating_add(1);
            node_hash(
                &subtree_from_scratch(left, next),
                &subtree_from_scratch(right, next),
            )
        }
    }
}

/// The path from the root to where a key's leaf is, or would be: the
/// sibling subtree's hash at each depth, and what sits at the end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// The sibling hashes from the root (depth 0) down.
    pub siblings: Vec<Hash>,
    /// The leaf at the end of the path: the key's own, another key's whose
    /// subtree it is (the key is absent), or none (absent).
    pub leaf: Option<(Key, Hash)>,
}

impl Proof {
    /// The root this proof gives for `key` holding `value` (`None`: absent),
    /// or `None` when the proof cannot speak for that claim.
    pub fn root_for(&self, key: &Key, value: Option<&Hash>) -> Option<Hash> {
        if self.siblings.len() >= usize::from(KEY_BITS) {
            return None;
        }
        let depth = u16::try_from(self.siblings.len()).ok()?;
        let mut hash = match (&self.leaf, value) {
            (Some((found, held)), Some(value)) if found == key && held == value => {
                leaf_hash(found, held)
            }
            // Absent: the path ends empty, or at another key's lone leaf
            // sharing the path.
            (None, None) => EMPTY,
            (Some((found, held)), None) if found != key && common_prefix(found, key) >= depth => {
                leaf_hash(found, held)
            }
            _ => return None,
        };
        for (index, sibling) in self.siblings.iter().enumerate().rev() {
            let index = u16::try_from(index).ok()?;
            hash = if bit(key, index) {
                node_hash(sibling, &hash)
            } else {
                node_hash(&hash, sibling)
            };
        }
        Some(hash)
    }

    /// Whether the proof shows `key` holding `value` (`None`: absent) under
    /// `root`.
    pub fn verify(&self, root: &Hash, key: &Key, value: Option<&Hash>) -> bool {
        self.root_for(key, value).as_ref() == Some(root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> Key {
        crate::hash::sha256(&n.to_le_bytes())
    }

    #[test]
    fn bit_helpers_agree() {
        let k = [0b1010_0000u8; 32];
        assert!(bit(&k, 0) && !bit(&k, 1) && bit(&k, 2));
        assert_eq!(common_prefix(&k, &k), 256);
        let mut other = k;
        other[3] ^= 0b0001_0000;
        assert_eq!(common_prefix(&k, &other), 27);
    }

    #[test]
    fn small_trees_hash_as_defined() {
        let mut tree = StateTree::default();
        assert_eq!(tree.root(), EMPTY);
        let (a, b) = ([0u8; 32], [0xffu8; 32]);
        tree.set(a, Some([1; 32]));
        assert_eq!(
            tree.root(),
            leaf_hash(&a, &[1; 32]),
            "a lone leaf is the root"
        );
        tree.set(b, Some([2; 32]));
        assert_eq!(
            tree.root(),
            node_hash(&leaf_hash(&a, &[1; 32]), &leaf_hash(&b, &[2; 32]))
        );
        // Two keys under the same first bit: an empty right child at the
        // root, their node at depth 1.
        let mut c = a;
        c[0] = 0b0100_0000;
        let mut tree = StateTree::default();
        tree.set(a, Some([1; 32]));
        tree.set(c, Some([3; 32]));
        let inner = node_hash(&leaf_hash(&a, &[1; 32]), &leaf_hash(&c, &[3; 32]));
        assert_eq!(tree.root(), node_hash(&inner, &EMPTY));
        tree.set(c, None);
        assert_eq!(tree.root(), leaf_hash(&a, &[1; 32]));
    }

    #[test]
    fn incremental_roots_equal_roots_from_scratch_in_any_order() {
        let mut tree = StateTree::default();
        let mut reversed = StateTree::default();
        for n in 0..300u64 {
            tree.set(key(n), Some(key(n + 1000)));
            if n % 7 == 0 {
                assert_eq!(tree.root(), tree.root_from_scratch(), "after {n}");
            }
        }
        for n in (0..300u64).rev() {
            reversed.set(key(n), Some(key(n + 1000)));
        }
        assert_eq!(tree.root(), reversed.root());
        for n in (0..300u64).step_by(3) {
            tree.set(key(n), None);
            tree.set(key(n + 1), Some([9; 32]));
            assert_eq!(tree.root(), tree.root_from_scratch(), "after removing {n}");
        }
    }

    #[test]
    fn changes_made_and_undone_between_two_roots_leave_the_root_as_it_was() {
        let mut tree = StateTree::default();
        for n in 0..50u64 {
            tree.set(key(n), Some(key(n + 1000)));
        }
        let root = tree.root();
        // What the mempool does: apply, then roll back, many times.
        for n in 0..50u64 {
            tree.set(key(n), Some([7; 32]));
            tree.set(key(n + 5000), Some([8; 32]));
            tree.set(key(n), Some(key(n + 1000)));
            tree.set(key(n + 5000), None);
        }
        assert_eq!(tree.len(), 50);
        assert_eq!(tree.root(), root);
        assert_eq!(tree.root_from_scratch(), root);
        // A change queued and not undone shows in the root and the proof.
        tree.set(key(3), Some([1; 32]));
        let changed = tree.root();
        assert_ne!(changed, root);
        assert_eq!(changed, tree.root_from_scratch());
        assert!(tree
            .proof(&key(3))
            .verify(&changed, &key(3), Some(&[1; 32])));
    }

    #[test]
    fn proofs_verify_for_members_and_absent_keys_and_fail_when_tampered() {
        let mut tree = StateTree::default();
        for n in 0..100u64 {
            tree.set(key(n), Some(key(n + 500)));
        }
        let root = tree.root();
        for n in [0u64, 17, 99] {
            let proof = tree.proof(&key(n));
            assert!(proof.verify(&root, &key(n), Some(&key(n + 500))));
            assert!(
                !proof.verify(&root, &key(n), Some(&key(n + 501))),
                "tampered value"
            );
            assert!(
                !proof.verify(&root, &key(n), None),
                "a member is not absent"
            );
            let mut bent = proof.clone();
            if let Some(first) = bent.siblings.first_mut() {
                first[0] ^= 1;
            }
            assert!(
                !bent.verify(&root, &key(n), Some(&key(n + 500))),
                "tampered path"
            );
        }
        for n in [1_000u64, 2_000, 3_000] {
            let proof = tree.proof(&key(n));
            assert!(proof.verify(&root, &key(n), None), "absent {n}");
            assert!(!proof.verify(&root, &key(n), Some(&[0; 32])));
        }
        let empty = StateTree::default();
        assert!(empty.proof(&key(1)).verify(&EMPTY, &key(1), None));
    }
}

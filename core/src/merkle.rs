//! Merkle roots over request digests and inclusion proofs (the tree shape of RFC 6962).
//!
//! Leaves and inner nodes are hashed under different domain tags, so a leaf can never be
//! passed off as an inner node (the second-preimage defence of RFC 6962 §2.1).

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::crypto::{Digest, Hasher};

fn leaf_hash(leaf: &Digest) -> Digest {
    Hasher::new(b"pbft/v1/merkle-leaf").digest(leaf).finish()
}

fn node_hash(left: &Digest, right: &Digest) -> Digest {
    Hasher::new(b"pbft/v1/merkle-node")
        .digest(left)
        .digest(right)
        .finish()
}

/// Hashes neighbours pairwise; an odd last node moves up unchanged.
fn next_level(level: &[Digest]) -> Vec<Digest> {
    level
        .chunks(2)
        .filter_map(|pair| match pair {
            [left, right] => Some(node_hash(left, right)),
            [single] => Some(*single),
            _ => None,
        })
        .collect()
}

/// The root of the tree over `leaves`, in order. The empty tree has a root of its own.
///
/// Pairing neighbours level by level and promoting an odd last node yields exactly the
/// RFC 6962 tree, whose left subtree holds the largest power of two below n leaves.
pub(crate) fn root(leaves: &[Digest]) -> Digest {
    if leaves.is_empty() {
        return Hasher::new(b"pbft/v1/merkle-empty").finish();
    }
    let mut level: Vec<Digest> = leaves.iter().map(leaf_hash).collect();
    while level.len() > 1 {
        level = next_level(&level);
    }
    level.first().copied().unwrap_or_default()
}

/// Proof that one leaf sits at `index` in a tree of `count` leaves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    /// Position of the leaf.
    pub index: u32,
    /// Number of leaves in the tree.
    pub count: u32,
    /// Sibling hashes from the leaf's level up to just below the root.
    pub path: Vec<Digest>,
}

/// A whole tree, kept level by level so that every leaf's proof costs no hashing.
pub(crate) struct Tree {
    /// Level 0 holds the leaf hashes; the last level holds the root alone.
    levels: Vec<Vec<Digest>>,
}

impl Tree {
    pub(crate) fn new(leaves: &[Digest]) -> Self {
        let mut levels = alloc::vec![leaves.iter().map(leaf_hash).collect::<Vec<_>>()];
        while let Some(level) = levels.last().filter(|level| level.len() > 1) {
            let next = next_level(level);
            levels.push(next);
        }
        Tree { levels }
    }

    pub(crate) fn root(&self) -> Digest {
        match self.levels.last().and_then(|level| level.first()) {
            Some(root) => *root,
            None => root(&[]),
        }
    }

    /// The proof for leaf `index`, or `None` if out of range.
    pub(crate) fn prove(&self, index: usize) -> Option<InclusionProof> {
        let count = self.levels.first()?.len();
        if index >= count {
            return None;
        }
        let mut path = Vec::new();
        let mut position = index;
        for level in self.levels.iter().take(self.levels.len().saturating_sub(1)) {
            if let Some(sibling) = level.get(position ^ 1) {
                path.push(*sibling);
            }
            position /= 2;
        }
        Some(InclusionProof {
            index: u32::try_from(index).ok()?,
            count: u32::try_from(count).ok()?,
            path,
        })
    }
}

/// The inclusion proof for `leaves[index]`, or `None` if `index` is out of range.
pub(crate) fn prove(leaves: &[Digest], index: usize) -> Option<InclusionProof> {
    Tree::new(leaves).prove(index)
}

/// Recomputes the root from a leaf and its proof; `None` if the proof is malformed.
pub(crate) fn root_from_proof(leaf: &Digest, proof: &InclusionProof) -> Option<Digest> {
    if proof.index >= proof.count {
        return None;
    }
    let mut hash = leaf_hash(leaf);
    let mut position = proof.index;
    let mut width = proof.count;
    let mut siblings = proof.path.iter();
    while width > 1 {
        let promoted = position == width - 1 && position.is_multiple_of(2);
        if !promoted {
            let sibling = siblings.next()?;
            hash = if position.is_multiple_of(2) {
                node_hash(&hash, sibling)
            } else {
                node_hash(sibling, &hash)
            };
        }
        position /= 2;
        width = width.div_ceil(2);
    }
    // A proof with hashes left over is not the proof of this position.
    match siblings.next() {
        Some(_) => None,
        None => Some(hash),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Digest> {
        (0..n)
            .map(|i| Hasher::new(b"test-leaf").u64(i as u64).finish())
            .collect()
    }

    /// The recursive definition of RFC 6962 §2.1, to check the level-by-level one against.
    fn rfc_root(leaves: &[Digest]) -> Digest {
        match leaves.len() {
            0 => root(&[]),
            1 => leaf_hash(&leaves[0]),
            n => {
                let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
                node_hash(&rfc_root(&leaves[..k]), &rfc_root(&leaves[k..]))
            }
        }
    }

    #[test]
    fn root_matches_rfc6962_shape_for_every_size_up_to_70() {
        for n in 0..70 {
            assert_eq!(root(&leaves(n)), rfc_root(&leaves(n)), "n = {n}");
        }
    }

    #[test]
    fn every_leaf_proves_against_the_root_and_no_other_position() {
        for n in 1..40 {
            let leaves = leaves(n);
            let expected = root(&leaves);
            for (index, leaf) in leaves.iter().enumerate() {
                let proof = prove(&leaves, index).unwrap();
                assert_eq!(root_from_proof(leaf, &proof), Some(expected));
                let mut moved = proof.clone();
                moved.index = (moved.index + 1) % moved.count;
                if n > 1 {
                    assert_ne!(root_from_proof(leaf, &moved), Some(expected));
                }
            }
        }
    }

    #[test]
    fn malformed_proofs_are_rejected() {
        let leaves = leaves(5);
        let mut proof = prove(&leaves, 2).unwrap();
        proof.path.push(Digest::default());
        assert_eq!(root_from_proof(&leaves[2], &proof), None, "extra hash");
        proof.path.truncate(1);
        assert_eq!(root_from_proof(&leaves[2], &proof), None, "missing hash");
        let beyond = InclusionProof {
            index: 5,
            count: 5,
            path: Vec::new(),
        };
        assert_eq!(
            root_from_proof(&leaves[0], &beyond),
            None,
            "index past count"
        );
    }

    #[test]
    fn a_leaf_cannot_pose_as_an_inner_node() {
        let leaves = leaves(2);
        let inner = node_hash(&leaf_hash(&leaves[0]), &leaf_hash(&leaves[1]));
        assert_ne!(root(&[inner]), root(&leaves));
    }
}

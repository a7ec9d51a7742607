//! Complete-tree layout for shallow ensembles.
//!
//! Every tree is padded to a complete binary tree of the ensemble's depth `D`:
//! node `i`'s children sit at `2i + 1` (true) and `2i + 2` (false), so a walk
//! needs no child pointers, only 8-byte splits, and always takes `D` steps.
//! A leaf above level `D` is padded with dummy splits whose subtrees all end
//! in that same leaf, so any path through the padding reaches it.

use super::node::{goes_true, Node, FEATURE_MASK};

/// Deepest ensemble padded this way: 2^10 leaves per tree at most.
pub(crate) const MAX_DEPTH: u32 = 10;

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Split {
    pub feature: u32,
    pub threshold: f32,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Complete {
    pub depth: u32,
    /// `2^depth - 1` splits per tree, tree after tree.
    pub splits: Vec<Split>,
    /// `2^depth` leaf indices per tree.
    pub leaves: Vec<u32>,
}

impl Complete {
    /// Pad the pointer layout `nodes` (trees rooted at `roots`), or `None`
    /// when the ensemble is too deep for it to pay off.
    pub fn build(nodes: &[Node], roots: &[u32], depths: &[u32]) -> Option<Self> {
        let depth = depths.iter().copied().max()?;
        let inner = (1usize << depth.min(MAX_DEPTH)) - 1;
        // Sparse deep trees would pad to many times their size: not worth it.
        if depth > MAX_DEPTH || roots.len() * (inner + 1) > 8 * nodes.len().max(512) {
            return None;
        }
        let mut c = Complete {
            depth,
            splits: vec![
                Split {
                    feature: 0,
                    threshold: 0.0
                };
                roots.len() * inner
            ],
            leaves: vec![0; roots.len() * (inner + 1)],
        };
        for (t, &root) in roots.iter().enumerate() {
            c.fill(nodes, t, 0, root, 0);
        }
        Some(c)
    }

    fn fill(&mut self, nodes: &[Node], tree: usize, pos: usize, node: u32, level: u32) {
        let inner = (1usize << self.depth) - 1;
        let n = nodes[node as usize];
        let is_leaf = n.on_true == node;
        if level == self.depth {
            // Depth is the longest path, so only leaves reach the last level.
            self.leaves[tree * (inner + 1) + pos - inner] = n.threshold.to_bits();
            return;
        }
        let (on_true, on_false) = if is_leaf {
            self.splits[tree * inner + pos] = Split {
                feature: 0,
                threshold: 0.0,
            };
            (node, node)
        } else {
            self.splits[tree * inner + pos] = Split {
                feature: n.feature,
                threshold: n.threshold,
            };
            (n.on_true, n.on_false)
        };
        self.fill(nodes, tree, 2 * pos + 1, on_true, level + 1);
        self.fill(nodes, tree, 2 * pos + 2, on_false, level + 1);
    }

    /// Walk `LANES` (tree, row) pairs down to their leaves; returns leaf indices.
    #[inline(always)]
    pub fn walk<const MODE: u32, const MISSING: bool, const LANES: usize>(
        &self,
        trees: [usize; LANES],
        x: &[f32],
        offs: [usize; LANES],
    ) -> [u32; LANES] {
        let inner = (1usize << self.depth) - 1;
        let mut idx = [0usize; LANES];
        for _ in 0..self.depth {
            for l in 0..LANES {
                let s = self.splits[trees[l] * inner + idx[l]];
                let v = x[offs[l] + (s.feature & FEATURE_MASK) as usize];
                idx[l] = 2 * idx[l] + 2
                    - usize::from(goes_true::<MODE, MISSING>(v, s.feature, s.threshold));
            }
        }
        let mut out = [0u32; LANES];
        for l in 0..LANES {
            out[l] = self.leaves[trees[l] * (inner + 1) + idx[l] - inner];
        }
        out
    }
}

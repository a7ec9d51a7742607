//! The 16-byte tree node both layouts walk, and the branch rule: shared by
//! the pointer layout (`ensemble`) and the padded complete-tree layout
//! (`complete`).

/// Low bits of `Node::feature`: the feature index.
pub(crate) const FEATURE_MASK: u32 = (1 << 28) - 1;
/// Set when a NaN feature value takes the true branch.
pub(super) const MISSING_TRUE: u32 = 1 << 28;
pub(super) const MODE_SHIFT: u32 = 29;

/// Branch modes, in `Node::feature >> MODE_SHIFT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Mode {
    Leq = 0,
    Lt = 1,
    Gte = 2,
    Gt = 3,
    Eq = 4,
    Neq = 5,
}

/// Sentinel for "modes differ between nodes": the walk reads each node's mode.
pub(super) const MIXED: u32 = 7;

#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub(crate) struct Node {
    /// Feature index, missing-value flag and mode (see the constants above).
    pub feature: u32,
    /// Split threshold; on a leaf, the bits of the leaf's index.
    pub threshold: f32,
    pub on_true: u32,
    pub on_false: u32,
}

/// Whether value `v` takes the true branch of a split on `t` (`feature`
/// carries the mode when `MODE` is `MIXED`, and the NaN rule).
#[inline(always)]
pub(crate) fn goes_true<const MODE: u32, const MISSING: bool>(
    v: f32,
    feature: u32,
    t: f32,
) -> bool {
    let mode = if MODE == MIXED {
        feature >> MODE_SHIFT
    } else {
        MODE
    };
    let c = match mode {
        0 => v <= t,
        1 => v < t,
        2 => v >= t,
        3 => v > t,
        4 => v == t,
        _ => v != t,
    };
    if MISSING {
        c | (v.is_nan() & (feature & MISSING_TRUE != 0))
    } else {
        c
    }
}

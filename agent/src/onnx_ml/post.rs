//! Score post-transforms (`post_transform`), computed as onnxruntime's
//! `ml_common.h` does in float32, its approximate inverse error function
//! for PROBIT included.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostTransform {
    None,
    Logistic,
    Softmax,
    SoftmaxZero,
    Probit,
}

impl PostTransform {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "NONE" => Self::None,
            "LOGISTIC" => Self::Logistic,
            "SOFTMAX" => Self::Softmax,
            "SOFTMAX_ZERO" => Self::SoftmaxZero,
            "PROBIT" => Self::Probit,
            _ => return None,
        })
    }

    /// Applies the transform to each row of `width` scores. With one score
    /// per row only PROBIT applies (onnxruntime's rule); the binary layouts
    /// that widen one score to two are the callers'.
    pub fn apply_rows(self, scores: &mut [f32], width: usize) {
        if width == 0 {
            return;
        }
        if width == 1 {
            if self == Self::Probit {
                scores.iter_mut().for_each(|s| *s = probit(*s));
            }
            return;
        }
        match self {
            Self::None => {}
            Self::Logistic => scores.iter_mut().for_each(|s| *s = logistic(*s)),
            Self::Probit => scores.iter_mut().for_each(|s| *s = probit(*s)),
            Self::Softmax => scores.chunks_mut(width).for_each(softmax),
            Self::SoftmaxZero => scores.chunks_mut(width).for_each(softmax_zero),
        }
    }
}

/// One score widened to `[1 - p, p]` as onnxruntime 1.32 does for a
/// binary model with a single score column: `p` is the logistic of the
/// score under LOGISTIC, the raw score under every other transform.
pub fn widen(post: PostTransform, s: f32) -> [f32; 2] {
    let p = if post == PostTransform::Logistic {
        logistic(s)
    } else {
        s
    };
    [1.0 - p, p]
}

pub fn logistic(v: f32) -> f32 {
    let e = 1.0 / (1.0 + (-v.abs()).exp());
    if v < 0.0 {
        1.0 - e
    } else {
        e
    }
}

fn erf_inv(x: f32) -> f32 {
    let sgn = if x < 0.0 { -1.0f32 } else { 1.0 };
    let x = (1.0 - x) * (1.0 + x);
    let log = x.ln();
    let v = 2.0 / (std::f32::consts::PI * 0.147) + 0.5 * log;
    let v2 = 1.0 / 0.147 * log;
    let v3 = -v + (v * v - v2).sqrt();
    sgn * v3.sqrt()
}

pub fn probit(v: f32) -> f32 {
    std::f32::consts::SQRT_2 * erf_inv(2.0 * v - 1.0)
}

pub fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(-f32::MAX, f32::max);
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    row.iter_mut().for_each(|v| *v /= sum);
}

/// Softmax that leaves (near-)zero scores out of the exponentials.
pub fn softmax_zero(row: &mut [f32]) {
    let max = row.iter().copied().fold(-f32::MAX, f32::max);
    let exp_neg_max = (-max).exp();
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        if *v > 0.000_000_1 || *v < -0.000_000_1 {
            *v = (*v - max).exp();
            sum += *v;
        } else {
            *v *= exp_neg_max;
        }
    }
    row.iter_mut().for_each(|v| *v /= sum);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logistic_is_symmetric_and_stable() {
        assert_eq!(logistic(0.0), 0.5);
        assert!((logistic(2.0) + logistic(-2.0) - 1.0).abs() < 1e-7);
        assert_eq!(logistic(-1000.0), 0.0);
        assert_eq!(logistic(1000.0), 1.0);
    }

    #[test]
    fn probit_inverts_the_normal_cdf_approximately() {
        assert!(probit(0.5).abs() < 1e-6);
        // Phi(1) = 0.8413; the approximation is good to about 1e-3.
        assert!((probit(0.8413) - 1.0).abs() < 5e-3, "{}", probit(0.8413));
        assert!(probit(1.5).is_nan());
    }

    #[test]
    fn softmax_rows_sum_to_one_and_softmax_zero_skips_zeros() {
        let mut s = [1.0, 2.0, 3.0, 0.0, 0.0, 0.0];
        PostTransform::Softmax.apply_rows(&mut s, 3);
        assert!((s[..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((s[3] - 1.0 / 3.0).abs() < 1e-6);
        let mut z = [0.0, 1.0, 2.0];
        PostTransform::SoftmaxZero.apply_rows(&mut z, 3);
        assert_eq!(z[0], 0.0);
        assert!((z[1] + z[2] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn widening_applies_only_the_logistic() {
        assert_eq!(widen(PostTransform::Softmax, 0.25), [0.75, 0.25]);
        assert_eq!(widen(PostTransform::None, 2.0), [-1.0, 2.0]);
        assert_eq!(widen(PostTransform::Logistic, 0.0), [0.5, 0.5]);
    }

    #[test]
    fn one_column_takes_only_probit() {
        let mut s = [0.3];
        PostTransform::Logistic.apply_rows(&mut s, 1);
        assert_eq!(s, [0.3]);
        PostTransform::Probit.apply_rows(&mut s, 1);
        assert!(s[0] < 0.0);
    }
}

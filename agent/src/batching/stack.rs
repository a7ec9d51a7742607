//! Requests stacked into one batch along the first dimension, and the
//! batch's outputs cut back into one answer per request.

use crate::tensors::{Input, Output};
use ferry_protocol::{DType, TensorData};

/// What requests must share to run in one batch: each input's dtype and
/// every dimension but the first.
pub type StackKey = Vec<(DType, Vec<usize>)>;

/// The key of one request's inputs and its row count (the first input's
/// first dimension); `None` for inputs that cannot be stacked (a scalar,
/// or inputs that disagree on the row count).
pub fn key_and_rows(inputs: &[Input]) -> Option<(StackKey, usize)> {
    let rows = *inputs.first()?.shape.first()?;
    let mut key = Vec::with_capacity(inputs.len());
    for i in inputs {
        match i.shape.split_first() {
            Some((r, rest)) if *r == rows => key.push((i.data.dtype(), rest.to_vec())),
            _ => return None,
        }
    }
    Some((key, rows))
}

/// The inputs of `requests` (each with the same key) concatenated along
/// the first dimension, in order.
pub fn stack(requests: &[&[Input]]) -> Vec<Input> {
    let Some(first) = requests.first() else {
        return Vec::new();
    };
    (0..first.len())
        .map(|k| {
            let parts: Vec<&Input> = requests.iter().filter_map(|r| r.get(k)).collect();
            let rows: usize = parts.iter().filter_map(|p| p.shape.first()).sum();
            let mut shape = first[k].shape.clone();
            if let Some(r) = shape.first_mut() {
                *r = rows;
            }
            Input {
                shape,
                data: concat(parts.iter().map(|p| &p.data)),
            }
        })
        .collect()
}

fn concat<'a>(mut parts: impl Iterator<Item = &'a TensorData>) -> TensorData {
    let Some(first) = parts.next() else {
        return TensorData::F32(Vec::new());
    };
    let mut out = first.clone();
    for p in parts {
        match (&mut out, p) {
            (TensorData::Bool(a), TensorData::Bool(b)) => a.extend_from_slice(b),
            (TensorData::I32(a), TensorData::I32(b)) => a.extend_from_slice(b),
            (TensorData::I64(a), TensorData::I64(b)) => a.extend_from_slice(b),
            (TensorData::F32(a), TensorData::F32(b)) => a.extend_from_slice(b),
            (TensorData::F64(a), TensorData::F64(b)) => a.extend_from_slice(b),
            (TensorData::Bytes(a), TensorData::Bytes(b)) => a.extend_from_slice(b),
            // Callers stack only requests of one key (same dtypes).
            _ => {}
        }
    }
    out
}

/// The batch's outputs cut into consecutive row ranges of `rows` each.
/// `None` when an output is not row-major over the batch (its first
/// dimension is not the batch's row count): the caller then runs the
/// requests one by one.
pub fn split(outputs: Vec<Output>, rows: &[usize]) -> Option<Vec<Vec<Output>>> {
    let total: usize = rows.iter().sum();
    let mut answers: Vec<Vec<Output>> = rows.iter().map(|_| Vec::new()).collect();
    for o in outputs {
        let (&n, rest) = o.shape.split_first()?;
        let per_row = rest.iter().product::<usize>();
        if n != total || o.data.len() != total * per_row {
            return None;
        }
        let mut start = 0;
        for (answer, r) in answers.iter_mut().zip(rows) {
            let mut shape = o.shape.clone();
            shape[0] = *r;
            answer.push(Output {
                name: o.name.clone(),
                shape,
                data: slice(&o.data, start * per_row, (start + r) * per_row),
            });
            start += r;
        }
    }
    Some(answers)
}

fn slice(d: &TensorData, from: usize, to: usize) -> TensorData {
    match d {
        TensorData::Bool(v) => TensorData::Bool(v[from..to].to_vec()),
        TensorData::I32(v) => TensorData::I32(v[from..to].to_vec()),
        TensorData::I64(v) => TensorData::I64(v[from..to].to_vec()),
        TensorData::F32(v) => TensorData::F32(v[from..to].to_vec()),
        TensorData::F64(v) => TensorData::F64(v[from..to].to_vec()),
        TensorData::Bytes(v) => TensorData::Bytes(v[from..to].to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(shape: &[usize], v: &[f32]) -> Input {
        Input {
            shape: shape.to_vec(),
            data: TensorData::F32(v.to_vec()),
        }
    }

    #[test]
    fn requests_stack_along_rows_and_split_back_in_order() {
        let a = vec![f32s(&[1, 2], &[1., 2.])];
        let b = vec![f32s(&[2, 2], &[3., 4., 5., 6.])];
        assert_eq!(key_and_rows(&a), key_and_rows(&b).map(|(k, _)| (k, 1)));
        let stacked = stack(&[&a, &b]);
        assert_eq!(stacked, vec![f32s(&[3, 2], &[1., 2., 3., 4., 5., 6.])]);
        let out = Output {
            name: "y".into(),
            shape: vec![3],
            data: TensorData::I64(vec![7, 8, 9]),
        };
        let answers = split(vec![out], &[1, 2]).unwrap_or_default();
        assert_eq!(answers.len(), 2);
        assert_eq!(answers[0][0].data, TensorData::I64(vec![7]));
        assert_eq!(answers[1][0].shape, vec![2]);
        assert_eq!(answers[1][0].data, TensorData::I64(vec![8, 9]));
    }

    #[test]
    fn shapes_that_differ_beyond_the_rows_get_different_keys() {
        let a = vec![f32s(&[1, 2], &[1., 2.])];
        let b = vec![f32s(&[1, 3], &[1., 2., 3.])];
        let c = vec![Input {
            shape: vec![1, 2],
            data: TensorData::F64(vec![1., 2.]),
        }];
        let ka = key_and_rows(&a).map(|k| k.0);
        assert_ne!(ka, key_and_rows(&b).map(|k| k.0));
        assert_ne!(ka, key_and_rows(&c).map(|k| k.0));
        // A scalar, or inputs that disagree on rows, cannot be stacked.
        assert!(key_and_rows(&[f32s(&[], &[1.])]).is_none());
        assert!(key_and_rows(&[f32s(&[1, 2], &[1., 2.]), f32s(&[2], &[1., 2.])]).is_none());
    }

    #[test]
    fn an_output_that_is_not_per_row_is_not_split() {
        let pooled = Output {
            name: "sum".into(),
            shape: vec![1, 4],
            data: TensorData::F32(vec![0.; 4]),
        };
        assert!(split(vec![pooled], &[1, 2]).is_none());
    }
}

//! Convolutions over channels-last images (`NWC`, `NHWC`: what jax2tf and
//! TensorFlow exports hand tract), turned channels-first so that
//! `crate::direct_conv` runs them: the image's channels moved in front of
//! its positions, a 1-D convolution made a 2-D one of height one, and the
//! output moved back.
//!
//! Profiled on `magika-standard-v3-3` (one 256 → 512 convolution of width
//! five over 512 positions, 2/3 of its run), tract copied every patch out
//! (its `Im2col`, 2.0 ms) before a product of 8.6 ms. The two transposes
//! here move a tenth of what the patches held, and the product reads each
//! tap where it lies.

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_hir::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
use tract_onnx::tract_hir::tract_core::ops::nn::DataFormat;

/// Turns channels-first every stride-one, single-group float32
/// channels-last convolution with constant filters and bias, 1-D or 2-D;
/// returns how many.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    let convs: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|n| n.op_as::<Conv>().is_some_and(|c| eligible(model, n, c)))
        .map(|n| n.id)
        .collect();
    for &id in &convs {
        let node = model.node(id);
        let Some(conv) = node.op_as::<Conv>() else {
            continue;
        };
        let [x, filters, bias] = node.inputs[..] else {
            continue;
        };
        let Some(mut kernel) = model.outlet_fact(filters)?.konst.clone() else {
            continue;
        };
        let spec = &conv.pool_spec;
        let one_d = spec.kernel_shape.len() == 1;
        let rank = model.outlet_fact(x)?.rank();
        // The first position axis, where the channels go.
        let first = usize::from(spec.data_format.has_n());
        let mut channels_first = conv.clone();
        channels_first.pool_spec = PoolSpec {
            data_format: if spec.data_format.has_n() {
                DataFormat::NCHW
            } else {
                DataFormat::CHW
            },
            ..spec.clone()
        };
        if one_d {
            channels_first.pool_spec = with_unit_height(&channels_first.pool_spec);
            let mut k = (*kernel).clone();
            k.insert_axis(2)?;
            kernel = k.into_arc_tensor();
        }
        let name = node.name.clone();
        let mut patch = TypedModelPatch::default();
        let mut y = patch.tap_model(model, x)?;
        let bias = patch.tap_model(model, bias)?;
        let filters = patch.add_const(format!("{name}.channels_first_filters"), kernel)?;
        y = patch.wire_node(
            format!("{name}.channels_first"),
            AxisOp::Move(rank - 1, first),
            &[y],
        )?[0];
        if one_d {
            y = patch.wire_node(format!("{name}.height"), AxisOp::Add(first + 1), &[y])?[0];
        }
        y = patch.wire_node(format!("{name}.conv"), channels_first, &[y, filters, bias])?[0];
        if one_d {
            y = patch.wire_node(format!("{name}.no_height"), AxisOp::Rm(first + 1), &[y])?[0];
        }
        y = patch.wire_node(
            format!("{name}.channels_last"),
            AxisOp::Move(first, rank - 1),
            &[y],
        )?[0];
        patch.shunt_outside(model, OutletId::new(id, 0), y)?;
        // A patch appends nodes: the ids collected above stay valid.
        patch.apply(model)?;
    }
    if !convs.is_empty() {
        model.compact()?;
    }
    Ok(convs.len())
}

/// What `crate::direct_conv` takes once turned channels-first.
fn eligible(model: &TypedModel, node: &TypedNode, conv: &Conv) -> bool {
    let spec = &conv.pool_spec;
    let facts = |i: usize| node.inputs.get(i).and_then(|o| model.outlet_fact(*o).ok());
    let (Some(x), Some(kernel), Some(bias)) = (facts(0), facts(1), facts(2)) else {
        return false;
    };
    let dims = spec.kernel_shape.len();
    let rank = dims + 1 + usize::from(spec.data_format.has_n());
    matches!(spec.data_format, DataFormat::NHWC | DataFormat::HWC)
        && matches!(dims, 1 | 2)
        && conv.q_params.is_none()
        && conv.kernel_fmt == KernelFormat::OIHW
        && conv.group == 1
        && node.inputs.len() == 3
        && (0..dims).all(|axis| spec.stride(axis) == 1)
        && !matches!(spec.padding, PaddingSpec::ExplicitOnnxPool(..))
        && x.datum_type == DatumType::F32
        && x.rank() == rank
        && kernel.datum_type == DatumType::F32
        && bias.datum_type == DatumType::F32
        && kernel.konst.is_some()
        && bias.konst.is_some()
}

/// A 1-D pooling spec as the 2-D one of height one.
fn with_unit_height(spec: &PoolSpec) -> PoolSpec {
    let grow = |v: &Option<TVec<usize>>| {
        v.as_ref()
            .map(|v| std::iter::once(1).chain(v.iter().copied()).collect())
    };
    let zero_first = |v: &TVec<usize>| std::iter::once(0).chain(v.iter().copied()).collect();
    PoolSpec {
        kernel_shape: std::iter::once(1)
            .chain(spec.kernel_shape.iter().copied())
            .collect(),
        padding: match &spec.padding {
            PaddingSpec::Explicit(before, after) => {
                PaddingSpec::Explicit(zero_first(before), zero_first(after))
            }
            other => other.clone(),
        },
        dilations: grow(&spec.dilations),
        strides: grow(&spec.strides),
        ..spec.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::values;

    /// A channels-last convolution of `kernel` over `positions` of `c`
    /// channels to `o`, with `padding`.
    fn conv_model(
        positions: &[usize],
        c: usize,
        o: usize,
        kernel: &[usize],
        padding: PaddingSpec,
        batch: bool,
    ) -> TractResult<TypedModel> {
        let mut m = TypedModel::default();
        let mut shape: Vec<usize> = if batch { vec![2] } else { vec![] };
        shape.extend(positions);
        shape.push(c);
        let x = m.add_source("x", f32::fact(&shape))?;
        let taps: usize = kernel.iter().product();
        let mut kshape = vec![o, c];
        kshape.extend(kernel);
        let w = m.add_const("w", Tensor::from_shape(&kshape, &values(o * c * taps, 7))?)?;
        let b = m.add_const("b", Tensor::from_shape(&[o], &values(o, 11))?)?;
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: if batch {
                    DataFormat::NHWC
                } else {
                    DataFormat::HWC
                },
                kernel_shape: kernel.into(),
                padding,
                dilations: None,
                strides: None,
                input_channels: c,
                output_channels: o,
            },
            kernel_fmt: KernelFormat::OIHW,
            group: 1,
            q_params: None,
        };
        let y = m.wire_node("conv", conv, &[x, w, b])?;
        m.select_output_outlets(&y)?;
        Ok(m)
    }

    /// 1-D and 2-D, with and without a batch axis, padded or not: the
    /// convolution ends on Ferry's kernel with tract's answers.
    #[test]
    fn a_channels_last_conv_runs_on_the_direct_kernel() -> TractResult<()> {
        let cases: [(&[usize], &[usize], PaddingSpec); 3] = [
            (&[19], &[5], PaddingSpec::Valid),
            (&[12], &[3], PaddingSpec::Explicit(tvec![1], tvec![2])),
            (&[6, 7], &[3, 3], PaddingSpec::SameUpper),
        ];
        for (positions, kernel, padding) in cases {
            for batch in [true, false] {
                let m = conv_model(positions, 5, 9, kernel, padding.clone(), batch)?;
                let mut ours = m.clone();
                assert_eq!(substitute(&mut ours)?, 1);
                assert_eq!(
                    crate::direct_conv::substitute(&mut ours)?,
                    1,
                    "{positions:?}"
                );
                let mut shape: Vec<usize> = if batch { vec![2] } else { vec![] };
                shape.extend(positions);
                shape.push(5);
                let x = crate::test_fixtures::input(&shape)?;
                let want = m.into_runnable()?.run(tvec![x.clone()])?;
                let got = ours.into_optimized()?.into_runnable()?.run(tvec![x])?;
                assert_eq!(got[0].shape(), want[0].shape());
                crate::test_fixtures::same_answers(&want[0], &got[0])?;
            }
        }
        Ok(())
    }

    /// A strided channels-last convolution stays tract's: the direct
    /// kernel would not take it.
    #[test]
    fn a_strided_conv_is_left_as_it_is() -> TractResult<()> {
        let mut m = conv_model(&[16], 4, 4, &[3], PaddingSpec::Valid, true)?;
        let conv = m.node_by_name("conv")?.id;
        if let Some(c) = m.node_mut(conv).op_as_mut::<Conv>() {
            c.pool_spec.strides = Some(tvec![2]);
        }
        assert_eq!(substitute(&mut m)?, 0);
        Ok(())
    }
}

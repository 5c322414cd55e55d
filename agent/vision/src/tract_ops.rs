//! ONNX ops that tract runs slowly on MTCNN's shapes, replaced at parse time by one-pass ops with
//! the same arithmetic. The ONNX files are unchanged; [`onnx`] is the parser that uses them.
//! Measured per op on a full-resolution P-Net level (582×1322, x86_64, one thread):
//!
//! - `PRelu`: tract expands it into three full passes (`x·slope`, `x > 0`, select), each writing a
//!   new tensor. MTCNN has a PReLU after every convolution; on that P-Net level those passes
//!   took 130 of 463 ms. [`ChannelPrelu`] does it in place in one pass.
//! - `Softmax` over rows of 2 (P-Net's face/non-face map, R-Net's and O-Net's scores): tract's
//!   kernel is built for long rows and spent 48–60 ms on P-Net's 190k rows. [`RowSoftmax`] loops.
//! - `MaxPool` (2-D, float, one output, no dilation or ceil mode): tract's pooling spent 29–39 ms
//!   on P-Net's first pool; [`MaxPool2d`] takes the maximum of whole rows first (vectorised), then
//!   along each row. Padding is computed by tract's own `PaddingSpec`, so the output shapes are
//!   tract's; any other MaxPool goes to tract's own op.
//! - `Conv` 1×1 with at most [`SMALL_CONV_OUTPUTS`] outputs (P-Net's two heads, 32 → 4 and
//!   32 → 2): tract repacks the whole 32-channel map for them (24–47 ms); [`Conv1x1`] runs them
//!   as multiply-adds over contiguous channel planes, tile by tile (summing in another order than
//!   a matrix product, so results differ in the last bits). Other convolutions are tract's.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{
    args_1, args_2, as_op, bail, format_err, op_as_typed_op, op_out_of_plan, tvec, EvalContext,
    EvalOp, Op, StaticName, TypedOp,
};
use tract_onnx::tract_hir::internal::{
    check_input_arity, check_output_arity, expand, Expansion, InferenceOp, InferenceResult, Solver,
    TensorProxy,
};

/// tract's ONNX parser with the four builders above swapped in.
pub fn onnx() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    onnx.op_register
        .insert("PRelu", |_, _| Ok((expand(PreluExpansion), vec![])));
    onnx.op_register.insert("Softmax", softmax);
    for (op, ours, slot) in [
        ("MaxPool", max_pool as OpBuilder, &TRACT_MAX_POOL),
        ("Conv", conv, &TRACT_CONV),
    ] {
        if let Some(original) = onnx.op_register.0.get(op) {
            slot.get_or_init(|| *original);
        }
        onnx.op_register.0.insert(op.to_string(), ours);
    }
    onnx
}

/// Parses `node` with tract's own builder kept in `slot` (the cases our op does not cover).
fn tracts_own(
    slot: &std::sync::OnceLock<OpBuilder>,
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    match slot.get() {
        Some(original) => original(ctx, node),
        None => bail!("{}: tract has no builder for it", node.op_type),
    }
}

/// tract's own `Conv` builder, for every convolution but the small 1×1 ones.
static TRACT_CONV: std::sync::OnceLock<OpBuilder> = std::sync::OnceLock::new();

/// Output channels up to which a 1×1 convolution runs as [`Conv1x1`]; wider ones are matrix
/// products that tract's kernels do better.
pub const SMALL_CONV_OUTPUTS: i64 = 8;

fn conv(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    if is_small_pointwise_conv(ctx, node)? {
        let bias = node.input.len() == 3 && !node.input[2].is_empty();
        return Ok((expand(Conv1x1Expansion { bias }), vec![]));
    }
    tracts_own(&TRACT_CONV, ctx, node)
}

/// A plain convolution (stride 1, no padding or dilation, one group) whose weights are a
/// `[O, K, 1, 1]` initializer, or a Cast of one (the f16 files), with `O <= SMALL_CONV_OUTPUTS`.
fn is_small_pointwise_conv(ctx: &ParsingContext, node: &NodeProto) -> TractResult<bool> {
    let all = |name: &str, v: isize| -> TractResult<bool> {
        Ok(node
            .get_attr_opt_tvec::<isize>(name)?
            .is_none_or(|xs| xs.iter().all(|&x| x == v)))
    };
    let plain = all("strides", 1)?
        && all("dilations", 1)?
        && all("pads", 0)?
        && matches!(
            node.get_attr_opt::<&str>("auto_pad")?,
            None | Some("NOTSET" | "VALID")
        )
        && node.get_attr_opt::<i64>("group")?.unwrap_or(1) == 1;
    let (Some(graph), Some(mut weights)) = (ctx.model.graph.as_ref(), node.input.get(1)) else {
        return Ok(false);
    };
    if !plain {
        return Ok(false);
    }
    if let Some(cast) = graph
        .node
        .iter()
        .find(|n| n.op_type == "Cast" && n.output.first() == Some(weights))
    {
        weights = &cast.input[0];
    }
    Ok(graph
        .initializer
        .iter()
        .find(|t| &t.name == weights)
        .is_some_and(|t| matches!(t.dims.as_slice(), [o, _, 1, 1] if *o <= SMALL_CONV_OUTPUTS)))
}

/// Shape inference for [`Conv1x1`]: `[N, K, H, W]` and `[O, K, 1, 1]` give `[N, O, H, W]`.
#[derive(Debug, Clone, Hash)]
struct Conv1x1Expansion {
    bias: bool,
}

impl Expansion for Conv1x1Expansion {
    fn name(&self) -> StaticName {
        "Conv1x1".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 2 + usize::from(self.bias))?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?;
        s.equals(&inputs[0].rank, 4)?;
        s.equals(&outputs[0].rank, 4)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[0].shape[1], &inputs[1].shape[0])?;
        s.equals(&outputs[0].shape[2], &inputs[0].shape[2])?;
        s.equals(&outputs[0].shape[3], &inputs[0].shape[3])?;
        Ok(())
    }

    fn wire(
        &self,
        name: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        for i in inputs {
            if model.outlet_fact(*i)?.datum_type != f32::datum_type() {
                bail!("{name}: 1x1 Conv supported on float32 only");
            }
        }
        model.wire_node(name, Conv1x1, inputs)
    }
}

/// `y[n, o] = b[o] + Σ_k w[o, k] · x[n, k]` over NCHW planes; inputs x, weights, optional bias.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Conv1x1;

impl Op for Conv1x1 {
    fn name(&self) -> StaticName {
        "Conv1x1".into()
    }

    op_as_typed_op!();
}

impl EvalOp for Conv1x1 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let shape = inputs[0].shape().to_vec();
        let (n, k, plane) = (shape[0], shape[1], shape[2] * shape[3]);
        let x = inputs[0].to_plain_array_view::<f32>()?;
        let x = x
            .as_slice()
            .ok_or_else(|| format_err!("Conv1x1: input not contiguous"))?;
        let w: Vec<f32> = inputs[1]
            .to_plain_array_view::<f32>()?
            .iter()
            .copied()
            .collect();
        let o = inputs[1].shape()[0];
        if w.len() != o * k {
            bail!(
                "Conv1x1: weights {:?} for {k} input channels",
                inputs[1].shape()
            );
        }
        let bias: Vec<f32> = match inputs.get(2) {
            Some(b) => b.to_plain_array_view::<f32>()?.iter().copied().collect(),
            None => vec![0.0; o],
        };
        if bias.len() != o {
            bail!("Conv1x1: {} biases for {o} outputs", bias.len());
        }
        if k == 0 {
            bail!("Conv1x1: input has no channels");
        }
        let mut y = Tensor::zero::<f32>(&[n, o, shape[2], shape[3]])?;
        if plane == 0 || o == 0 {
            // Empty output (chunks of zero elements would panic).
            return Ok(tvec!(y.into_tvalue()));
        }
        {
            let mut view = y.try_as_plain_ram_mut()?;
            let out = view.as_slice_mut::<f32>()?;
            // Tiles of pixels keep the K input rows of a tile in cache while every output uses them.
            const TILE: usize = 1024;
            for (xs, ys) in x
                .chunks_exact(k * plane)
                .zip(out.chunks_exact_mut(o * plane))
            {
                for t0 in (0..plane).step_by(TILE) {
                    let t1 = (t0 + TILE).min(plane);
                    for oi in 0..o {
                        let dst = &mut ys[oi * plane + t0..oi * plane + t1];
                        dst.fill(bias[oi]);
                        for ki in 0..k {
                            let a = w[oi * k + ki];
                            for (d, v) in dst.iter_mut().zip(&xs[ki * plane + t0..ki * plane + t1])
                            {
                                *d += a * v;
                            }
                        }
                    }
                }
            }
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for Conv1x1 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (x, w) = (&inputs[0].shape, &inputs[1].shape);
        Ok(tvec!(f32::fact([
            x[0].clone(),
            w[0].clone(),
            x[2].clone(),
            x[3].clone()
        ])))
    }

    as_op!();
}

type OpBuilder =
    fn(&ParsingContext, &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// tract's own `MaxPool` builder, for the cases [`MaxPool2d`] does not cover.
static TRACT_MAX_POOL: std::sync::OnceLock<OpBuilder> = std::sync::OnceLock::new();

/// ONNX `MaxPool`: the plain 2-D case becomes [`MaxPoolExpansion`], the rest tract's op.
fn max_pool(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    use tract_onnx::tract_hir::ops::cnn::{HirMaxPool, PaddingSpec, PoolSpec};
    let kernel: Option<TVec<usize>> = node.get_attr_opt_tvec("kernel_shape")?;
    let dilations: Option<TVec<usize>> = node.get_attr_opt_tvec("dilations")?;
    let pads: Option<TVec<isize>> = node.get_attr_opt_tvec("pads")?;
    let ceil_mode = node.get_attr_opt::<i64>("ceil_mode")?.unwrap_or(0);
    let padding = match node.get_attr_opt::<&str>("auto_pad")? {
        Some("SAME_UPPER") => Some(PaddingSpec::SameUpper),
        Some("SAME_LOWER") => Some(PaddingSpec::SameLower),
        Some("VALID") => Some(PaddingSpec::Valid),
        None | Some("NOTSET") if pads.is_none() => Some(PaddingSpec::ExplicitOnnxPool(
            tvec!(0, 0),
            tvec!(0, 0),
            false,
        )),
        _ => None,
    };
    match (kernel, padding) {
        (Some(kernel), Some(padding))
            if kernel.len() == 2
                && node.output.len() == 1
                && ceil_mode == 0
                && dilations.is_none_or(|d| d.iter().all(|&x| x == 1)) =>
        {
            let strides: Option<TVec<usize>> = node.get_attr_opt_tvec("strides")?;
            let spec = PoolSpec::new(
                tract_onnx::tract_hir::ops::nn::DataFormat::NCHW,
                kernel,
                padding,
                None,
                strides,
                0,
                0,
            );
            Ok((
                expand(MaxPoolExpansion(HirMaxPool::new(spec, None))),
                vec![],
            ))
        }
        _ => tracts_own(&TRACT_MAX_POOL, ctx, node),
    }
}

/// tract's MaxPool for shape inference; wires [`MaxPool2d`] once the input shape is concrete.
#[derive(Debug, Clone, Hash)]
struct MaxPoolExpansion(tract_onnx::tract_hir::ops::cnn::HirMaxPool);

impl Expansion for MaxPoolExpansion {
    fn name(&self) -> StaticName {
        "MaxPool".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        self.0.rules(s, inputs, outputs)
    }

    fn wire(
        &self,
        name: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let fact = model.outlet_fact(inputs[0])?.clone();
        let spec = &self.0.pool_spec;
        if let (true, Some(shape)) = (
            fact.datum_type == f32::datum_type() && fact.rank() == 4,
            fact.shape.as_concrete(),
        ) {
            let ones = [1usize, 1];
            let strides = spec.strides.as_deref().unwrap_or(&ones);
            let dims = spec
                .padding
                .compute(&shape[2..], &spec.kernel_shape, &ones, strides);
            let op = MaxPool2d {
                kernel: [spec.kernel_shape[0], spec.kernel_shape[1]],
                stride: [strides[0], strides[1]],
                pad_before: [dims[0].pad_before, dims[1].pad_before],
                output: [dims[0].convoluted, dims[1].convoluted],
            };
            return model.wire_node(name, op, inputs);
        }
        self.0.wire(name, model, inputs)
    }
}

/// Max over `kernel` windows of an NCHW float tensor; the padding (never part of a maximum) and
/// the output size are fixed for the input shape the plan was made for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MaxPool2d {
    kernel: [usize; 2],
    stride: [usize; 2],
    pad_before: [usize; 2],
    output: [usize; 2],
}

impl MaxPool2d {
    /// The input indices `[start, end)` window `o` reads along one axis, clipped to the input.
    fn window(&self, axis: usize, o: usize, len: usize) -> (usize, usize) {
        let start = (o * self.stride[axis]) as isize - self.pad_before[axis] as isize;
        let end = (start + self.kernel[axis] as isize).clamp(0, len as isize) as usize;
        (start.clamp(0, len as isize) as usize, end)
    }
}

impl Op for MaxPool2d {
    fn name(&self) -> StaticName {
        "MaxPool2d".into()
    }

    op_as_typed_op!();
}

impl EvalOp for MaxPool2d {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let shape = x.shape().to_vec();
        let (h, w) = (shape[2], shape[3]);
        let (oh, ow) = (self.output[0], self.output[1]);
        let input = x.to_plain_array_view::<f32>()?;
        let input = input
            .as_slice()
            .ok_or_else(|| format_err!("MaxPool2d: input not contiguous"))?;
        let mut y = Tensor::zero::<f32>(&[shape[0], shape[1], oh, ow])?;
        if h * w == 0 || oh * ow == 0 {
            // Nothing to pool (chunks of zero elements would panic).
            return Ok(tvec!(y.into_tvalue()));
        }
        {
            let mut view = y.try_as_plain_ram_mut()?;
            let out = view.as_slice_mut::<f32>()?;
            let cols: Vec<(usize, usize)> = (0..ow).map(|o| self.window(1, o, w)).collect();
            // 2-wide, stride-2 windows all inside the row (P-Net, O-Net): pairwise maxima.
            let pairs = cols
                .iter()
                .enumerate()
                .all(|(o, &(x0, x1))| x0 == 2 * o && x1 == x0 + 2);
            let mut rowmax = vec![0f32; w];
            for (plane, dst) in input.chunks_exact(h * w).zip(out.chunks_exact_mut(oh * ow)) {
                for (oy, drow) in dst.chunks_exact_mut(ow).enumerate() {
                    let (y0, y1) = self.window(0, oy, h);
                    if y0 >= y1 {
                        drow.fill(f32::NEG_INFINITY);
                        continue;
                    }
                    // Maximum of the window's rows, element by element (contiguous: vectorises).
                    rowmax.copy_from_slice(&plane[y0 * w..(y0 + 1) * w]);
                    for y in y0 + 1..y1 {
                        for (m, v) in rowmax.iter_mut().zip(&plane[y * w..(y + 1) * w]) {
                            *m = m.max(*v);
                        }
                    }
                    if pairs {
                        for (d, p) in drow.iter_mut().zip(rowmax.chunks_exact(2)) {
                            *d = p[0].max(p[1]);
                        }
                    } else {
                        for (d, &(x0, x1)) in drow.iter_mut().zip(&cols) {
                            *d = rowmax[x0..x1]
                                .iter()
                                .copied()
                                .fold(f32::NEG_INFINITY, f32::max);
                        }
                    }
                }
            }
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for MaxPool2d {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let s = &inputs[0].shape;
        Ok(tvec!(f32::fact([
            s[0].clone(),
            s[1].clone(),
            self.output[0].to_dim(),
            self.output[1].to_dim()
        ])))
    }

    as_op!();
}

/// ONNX `Softmax`. Before opset 13 the input is flattened to 2-D at `axis` (default 1), so each
/// row is contiguous whatever the axis; from 13 on it is one axis (default -1), contiguous only
/// when it is the last. Other cases go to tract's own ops.
fn softmax(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let axis: Option<i64> = node.get_attr_opt("axis")?;
    let op = if ctx.onnx_operator_set_version < 13 {
        expand(RowSoftmaxExpansion {
            axis: axis.unwrap_or(1),
        })
    } else if axis.unwrap_or(-1) == -1 {
        expand(RowSoftmaxExpansion { axis: -1 })
    } else {
        expand(tract_onnx::tract_hir::ops::nn::Softmax::new(
            axis.unwrap_or(-1) as isize,
        ))
    };
    Ok((op, vec![]))
}

/// Shape checks at inference time; wires [`RowSoftmax`] once the rank is known.
#[derive(Debug, Clone, Hash)]
struct RowSoftmaxExpansion {
    /// The first axis of a row (negative counts from the end).
    axis: i64,
}

impl Expansion for RowSoftmaxExpansion {
    fn name(&self) -> StaticName {
        "RowSoftmax".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        same_shape_rules(s, inputs, outputs, 1)
    }

    fn wire(
        &self,
        name: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let x = model.outlet_fact(inputs[0])?.clone();
        if x.datum_type != f32::datum_type() {
            bail!(
                "{name}: Softmax supported on float32 only, got {:?}",
                x.datum_type
            );
        }
        let rank = x.rank() as i64;
        let axis = if self.axis < 0 {
            self.axis + rank
        } else {
            self.axis
        };
        if !(0..rank).contains(&axis) {
            bail!("{name}: axis {} out of range for rank {rank}", self.axis);
        }
        model.wire_node(
            name,
            RowSoftmax {
                axis: axis as usize,
            },
            inputs,
        )
    }
}

/// Softmax over each contiguous row made of the axes from `axis` to the last.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowSoftmax {
    axis: usize,
}

impl Op for RowSoftmax {
    fn name(&self) -> StaticName {
        "RowSoftmax".into()
    }

    op_as_typed_op!();
}

impl EvalOp for RowSoftmax {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let mut y = args_1!(inputs).into_tensor();
        let row: usize = y.shape()[self.axis..].iter().product();
        {
            let mut view = y.try_as_plain_ram_mut()?;
            let data = view.as_slice_mut::<f32>()?;
            if row > 0 {
                for r in data.chunks_mut(row) {
                    // Shifting by the row's maximum keeps exp() finite, as every softmax does.
                    let max = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0;
                    for v in r.iter_mut() {
                        *v = (*v - max).exp();
                        sum += *v;
                    }
                    for v in r.iter_mut() {
                        *v /= sum;
                    }
                }
            }
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for RowSoftmax {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// Rules of an op whose one output has the type and shape of its first input.
fn same_shape_rules<'r, 'p: 'r>(
    s: &mut Solver<'r>,
    inputs: &'p [TensorProxy],
    outputs: &'p [TensorProxy],
    arity: usize,
) -> InferenceResult {
    check_input_arity(inputs, arity)?;
    check_output_arity(outputs, 1)?;
    s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?;
    s.equals(&inputs[0].shape, &outputs[0].shape)?;
    Ok(())
}

/// The inference-time side: checks shapes, then wires [`ChannelPrelu`].
#[derive(Debug, Clone, Hash)]
struct PreluExpansion;

impl Expansion for PreluExpansion {
    fn name(&self) -> StaticName {
        "Prelu".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        same_shape_rules(s, inputs, outputs, 2)
    }

    fn wire(
        &self,
        name: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let x = model.outlet_fact(inputs[0])?.clone();
        let slope = model.outlet_fact(inputs[1])?.clone();
        if x.datum_type != f32::datum_type() || slope.datum_type != f32::datum_type() {
            bail!(
                "{name}: PRelu supported on float32 only, got {:?} / {:?}",
                x.datum_type,
                slope.datum_type
            );
        }
        // ONNX broadcasting aligns the slope's shape to the right of x's. The slope may vary along at
        // most one axis (the channels); anything else is not a PReLU these models use.
        let rank = x.rank();
        let sshape = slope
            .shape
            .as_concrete()
            .ok_or_else(|| format_err!("{name}: slope shape not known"))?;
        if sshape.len() > rank {
            bail!(
                "{name}: slope of rank {} for input of rank {rank}",
                sshape.len()
            );
        }
        let offset = rank - sshape.len();
        let varying: Vec<usize> = sshape
            .iter()
            .enumerate()
            .filter(|(_, d)| **d != 1)
            .map(|(k, _)| k + offset)
            .collect();
        let axis = match varying.as_slice() {
            [] => None,
            [a] => {
                if x.shape[*a] != sshape[*a - offset].to_dim() {
                    bail!(
                        "{name}: slope has {} values for axis {a} of {}",
                        sshape[*a - offset],
                        x.shape[*a]
                    );
                }
                Some(*a)
            }
            _ => bail!("{name}: slope {sshape:?} varies along more than one axis"),
        };
        model.wire_node(name, ChannelPrelu { axis }, inputs)
    }
}

/// `y = x > 0 ? x : x·slope[c]`, `c` the index along `axis` (one slope for all when `axis` is None).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChannelPrelu {
    axis: Option<usize>,
}

impl Op for ChannelPrelu {
    fn name(&self) -> StaticName {
        "ChannelPrelu".into()
    }

    op_as_typed_op!();
}

impl EvalOp for ChannelPrelu {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, slope) = args_2!(inputs);
        let slopes: Vec<f32> = slope
            .to_plain_array_view::<f32>()?
            .iter()
            .copied()
            .collect();
        // Takes the buffer over when this node is its only reader (the usual case), else copies it.
        let mut y = x.into_tensor();
        let shape = y.shape().to_vec();
        // Elements per channel step: the product of the dimensions after the channel axis.
        let (inner, channels) = match self.axis {
            Some(a) => (shape[a + 1..].iter().product::<usize>(), shape[a]),
            None => (y.len(), 1),
        };
        if slopes.len() != channels {
            bail!(
                "ChannelPrelu: {} slopes for {channels} channels",
                slopes.len()
            );
        }
        {
            let mut view = y.try_as_plain_ram_mut()?;
            let data = view.as_slice_mut::<f32>()?;
            if inner > 0 {
                for (k, block) in data.chunks_mut(inner).enumerate() {
                    let a = slopes[k % channels];
                    for v in block {
                        // Written as a select so that it vectorises.
                        *v = if *v > 0.0 { *v } else { *v * a };
                    }
                }
            }
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for ChannelPrelu {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.clone())))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The op against the ONNX definition, on a tiny graph with the slope along axis 1 of NCHW.
    #[test]
    fn matches_the_onnx_definition() {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, 2, 2, 2])).unwrap();
        let s = model
            .add_const(
                "s",
                tract_ndarray::arr1(&[0.5f32, -2.0])
                    .into_shape_with_order((2, 1, 1))
                    .unwrap()
                    .into_tensor(),
            )
            .unwrap();
        let y = PreluExpansion.wire("p", &mut model, &[x, s]).unwrap();
        model.select_output_outlets(&y).unwrap();
        let plan = model.into_runnable().unwrap();
        let input: Vec<f32> = vec![1.0, -1.0, 0.0, -4.0, 3.0, -3.0, 2.0, -0.5];
        let out = plan
            .run(tvec!(Tensor::from_shape(&[1, 2, 2, 2], &input)
                .unwrap()
                .into_tvalue()))
            .unwrap();
        let got: Vec<f32> = out[0]
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect();
        let want: Vec<f32> = input
            .iter()
            .enumerate()
            .map(|(i, &v)| if v > 0.0 { v } else { v * [0.5, -2.0][i / 4] })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn softmax_rows_sum_to_one_and_keep_order() {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([3, 2])).unwrap();
        let y = RowSoftmaxExpansion { axis: -1 }
            .wire("s", &mut model, &[x])
            .unwrap();
        model.select_output_outlets(&y).unwrap();
        let plan = model.into_runnable().unwrap();
        let input = [0.0f32, 0.0, 1.0, 3.0, 1000.0, -1000.0];
        let out = plan
            .run(tvec!(Tensor::from_shape(&[3, 2], &input)
                .unwrap()
                .into_tvalue()))
            .unwrap();
        let got: Vec<f32> = out[0]
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect();
        let p = 1.0 / (1.0 + (-2.0f32).exp());
        let want = [0.5, 0.5, 1.0 - p, p, 1.0, 0.0];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    /// MaxPool2d against tract's own MaxPool, for the pools MTCNN has and an odd-sized input.
    #[test]
    fn max_pool_matches_tracts() {
        use tract_onnx::tract_hir::ops::cnn::{HirMaxPool, PaddingSpec, PoolSpec};
        use tract_onnx::tract_hir::ops::nn::DataFormat;
        let shape = [2usize, 3, 11, 14];
        let input: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|i| ((i * 7919) % 97) as f32 - 48.0)
            .collect();
        let run =
            |wire: &dyn Fn(&mut TypedModel, OutletId) -> TVec<OutletId>| -> (Vec<usize>, Vec<f32>) {
                let mut model = TypedModel::default();
                let x = model.add_source("x", f32::fact(shape)).unwrap();
                let y = wire(&mut model, x);
                model.select_output_outlets(&y).unwrap();
                let out = model
                    .into_runnable()
                    .unwrap()
                    .run(tvec!(Tensor::from_shape(&shape, &input)
                        .unwrap()
                        .into_tvalue()))
                    .unwrap();
                let v = out[0].to_plain_array_view::<f32>().unwrap();
                (v.shape().to_vec(), v.iter().copied().collect())
            };
        for (k, st, pad) in [
            (2, 2, PaddingSpec::SameUpper),
            (3, 2, PaddingSpec::SameUpper),
            (3, 2, PaddingSpec::Valid),
            (3, 1, PaddingSpec::SameLower),
        ] {
            let spec = PoolSpec::new(
                DataFormat::NCHW,
                tvec!(k, k),
                pad.clone(),
                None,
                Some(tvec!(st, st)),
                0,
                0,
            );
            let hir = HirMaxPool::new(spec, None);
            let ours = run(&|m, x| MaxPoolExpansion(hir.clone()).wire("p", m, &[x]).unwrap());
            let theirs = run(&|m, x| hir.wire("p", m, &[x]).unwrap());
            assert_eq!(ours, theirs, "kernel {k} stride {st} {pad:?}");
        }
    }

    #[test]
    fn conv1x1_is_a_per_pixel_matrix_product() {
        let (n, k, o, h, w) = (2usize, 3usize, 2usize, 3usize, 5usize);
        let x: Vec<f32> = (0..n * k * h * w)
            .map(|i| ((i * 31) % 17) as f32 - 8.0)
            .collect();
        let wt = [0.5f32, -1.0, 2.0, 0.25, 0.0, -3.0];
        let b = [1.0f32, -2.0];
        let mut model = TypedModel::default();
        let xi = model.add_source("x", f32::fact([n, k, h, w])).unwrap();
        let wi = model
            .add_const("w", Tensor::from_shape(&[o, k, 1, 1], &wt).unwrap())
            .unwrap();
        let bi = model
            .add_const("b", Tensor::from_shape(&[o], &b).unwrap())
            .unwrap();
        let y = Conv1x1Expansion { bias: true }
            .wire("c", &mut model, &[xi, wi, bi])
            .unwrap();
        model.select_output_outlets(&y).unwrap();
        let out = model
            .into_runnable()
            .unwrap()
            .run(tvec!(Tensor::from_shape(&[n, k, h, w], &x)
                .unwrap()
                .into_tvalue()))
            .unwrap();
        let got = out[0].to_plain_array_view::<f32>().unwrap();
        assert_eq!(got.shape(), &[n, o, h, w]);
        let plane = h * w;
        for ni in 0..n {
            for oi in 0..o {
                for p in 0..plane {
                    let want = b[oi]
                        + (0..k)
                            .map(|ki| wt[oi * k + ki] * x[(ni * k + ki) * plane + p])
                            .sum::<f32>();
                    let g = got.as_slice().unwrap()[(ni * o + oi) * plane + p];
                    assert!((g - want).abs() < 1e-5, "n{ni} o{oi} p{p}: {g} vs {want}");
                }
            }
        }
    }
}

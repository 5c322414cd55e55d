//! Rewrites of an ONNX graph before tract parses it: patterns that compute a known op the long way.
//!
//! MobileFaceNet, converted from TFLite, spells each PReLU as `relu(x) + c·(x − |x|)`: five
//! element-wise passes (Relu, Abs, Sub, Mul, Add), each writing a new tensor, 33 times over. In
//! tract they took 19% of the embedder's time. Since `x − |x| = 2·min(x, 0)`, the pattern is
//! `PRelu(x, 2c)`, which [`super::tract_ops`] runs in one pass in place. The result is
//! bit-identical: the factor 2 moves only the exponent, so `c·(2x)` and `(2c)·x` round alike.

use std::collections::{HashMap, HashSet};

use tract_onnx::pb::{GraphProto, ModelProto, NodeProto, TensorProto};
use tract_onnx::prelude::*;

/// Decodes an ONNX file, applies the rewrites, and parses it with [`super::tract_ops::onnx`].
pub fn parse(bytes: &[u8]) -> TractResult<InferenceModel> {
    let onnx = super::tract_ops::onnx();
    let mut proto: ModelProto = onnx.proto_model_for_read(&mut &*bytes)?;
    if let Some(graph) = proto.graph.as_mut() {
        fuse_split_prelu(graph);
    }
    onnx.model_for_proto_model(&proto)
}

/// Name of the scalar 2.0 initializer the fused nodes share.
const TWO: &str = "camgate.prelu.two";

/// One occurrence: the indices of its five nodes, the input `x` and the half-slope `c`.
struct SplitPrelu {
    add: usize,
    others: [usize; 4],
    x: String,
    c: String,
}

/// Replaces every `Add(Relu(x), Mul(Sub(x, Abs(x)), c))` (either operand order of Add and Mul)
/// whose intermediate values have no other use by `PRelu(x, Mul(c, 2))`. Returns how many.
pub fn fuse_split_prelu(graph: &mut GraphProto) -> usize {
    let found = find_split_prelus(graph);
    if found.is_empty() {
        return 0;
    }
    let mut replaced: HashMap<usize, [NodeProto; 2]> = HashMap::new();
    let mut dropped: HashSet<usize> = HashSet::new();
    for m in &found {
        let add = &graph.node[m.add];
        let slope = format!("{}.camgate_slope", add.output[0]);
        // Both new nodes take Add's place: by then x and c exist, and Add's consumers come later.
        let double = NodeProto {
            name: format!("{}.camgate_double_slope", add.name),
            op_type: "Mul".into(),
            input: vec![m.c.clone(), TWO.into()],
            output: vec![slope.clone()],
            ..Default::default()
        };
        let prelu = NodeProto {
            name: format!("{}.camgate_prelu", add.name),
            op_type: "PRelu".into(),
            input: vec![m.x.clone(), slope],
            output: vec![add.output[0].clone()],
            ..Default::default()
        };
        replaced.insert(m.add, [double, prelu]);
        dropped.extend(m.others);
    }
    let nodes = std::mem::take(&mut graph.node);
    for (i, node) in nodes.into_iter().enumerate() {
        if let Some(new) = replaced.remove(&i) {
            graph.node.extend(new);
        } else if !dropped.contains(&i) {
            graph.node.push(node);
        }
    }
    graph.initializer.push(TensorProto {
        name: TWO.into(),
        data_type: 1, // FLOAT
        float_data: vec![2.0],
        ..Default::default()
    });
    found.len()
}

fn find_split_prelus(graph: &GraphProto) -> Vec<SplitPrelu> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for (i, n) in graph.node.iter().enumerate() {
        for o in &n.output {
            producer.insert(o, i);
        }
        for v in &n.input {
            *uses.entry(v).or_default() += 1;
        }
    }
    for o in &graph.output {
        *uses.entry(&o.name).or_default() += 1;
    }
    // The node producing `value`, if it is a single-output `op` whose output only this pattern uses.
    let private = |value: &str, op: &str| -> Option<usize> {
        let i = *producer.get(value)?;
        let n = &graph.node[i];
        (n.op_type == op && n.output.len() == 1 && uses.get(value) == Some(&1)).then_some(i)
    };
    let mut found = Vec::new();
    for (add, n) in graph.node.iter().enumerate() {
        if n.op_type != "Add" || n.input.len() != 2 || n.output.len() != 1 {
            continue;
        }
        let matched = [(0, 1), (1, 0)].into_iter().find_map(|(r, m)| {
            let relu = private(&n.input[r], "Relu")?;
            let x = graph.node[relu].input.first()?;
            let mul = private(&n.input[m], "Mul")?;
            let mul_in = &graph.node[mul].input;
            if mul_in.len() != 2 {
                return None;
            }
            [(0, 1), (1, 0)].into_iter().find_map(|(s, c)| {
                let sub = private(&mul_in[s], "Sub")?;
                let sub_in = &graph.node[sub].input;
                let abs = private(sub_in.get(1)?, "Abs")?;
                (sub_in[0] == *x && graph.node[abs].input.first() == Some(x)).then(|| SplitPrelu {
                    add,
                    others: [relu, abs, sub, mul],
                    x: x.clone(),
                    c: mul_in[c].clone(),
                })
            })
        });
        found.extend(matched);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::ValueInfoProto;

    fn mobilefacenet() -> ModelProto {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/mobilefacenet.onnx"
        );
        let bytes = std::fs::read(path).expect("models/mobilefacenet.onnx");
        super::super::tract_ops::onnx()
            .proto_model_for_read(&mut bytes.as_slice())
            .unwrap()
    }

    fn run(proto: &ModelProto, input: &Tensor) -> Vec<f32> {
        let plan = super::super::tract_ops::onnx()
            .model_for_proto_model(proto)
            .and_then(|m| m.with_input_fact(0, f32::fact([1, 3, 112, 112]).into()))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .unwrap();
        let out = plan.run(tvec!(input.clone().into())).unwrap();
        out[0]
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect()
    }

    #[test]
    fn mobilefacenet_prelus_fuse_and_give_identical_embeddings() {
        let original = mobilefacenet();
        let mut fused = original.clone();
        let graph = fused.graph.as_mut().unwrap();
        let before = graph.node.len();
        assert_eq!(fuse_split_prelu(graph), 33);
        // Five nodes become two, 33 times.
        assert_eq!(graph.node.len(), before - 33 * 3);
        assert_eq!(
            graph.node.iter().filter(|n| n.op_type == "PRelu").count(),
            33
        );
        assert!(graph
            .node
            .iter()
            .all(|n| !matches!(n.op_type.as_str(), "Relu" | "Abs" | "Sub")));
        // Deterministic input covering negative and positive values.
        let input = Tensor::from_shape(
            &[1, 3, 112, 112],
            &(0..3 * 112 * 112)
                .map(|i| ((i * 7919 % 255) as f32 - 127.5) / 128.0)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let (a, b) = (run(&original, &input), run(&fused, &input));
        assert_eq!(a.len(), 192);
        let worst = a
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        let scale = a.iter().map(|v| v.abs()).fold(0f32, f32::max);
        assert!(
            worst <= scale * 1e-5,
            "fused output differs by {worst} (scale {scale})"
        );
    }

    #[test]
    fn a_pattern_whose_values_are_used_elsewhere_is_left_alone() {
        let mut proto = mobilefacenet();
        let graph = proto.graph.as_mut().unwrap();
        // Expose the first Abs's output: its pattern must stay, the other 32 still fuse.
        let abs = graph
            .node
            .iter()
            .find(|n| n.op_type == "Abs")
            .unwrap()
            .output[0]
            .clone();
        graph.output.push(ValueInfoProto {
            name: abs,
            ..Default::default()
        });
        assert_eq!(fuse_split_prelu(graph), 32);
        assert_eq!(graph.node.iter().filter(|n| n.op_type == "Abs").count(), 1);
        // A graph without the pattern is untouched, and gets no extra initializer.
        let mut plain = GraphProto {
            node: vec![NodeProto {
                op_type: "Relu".into(),
                input: vec!["x".into()],
                output: vec!["y".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(fuse_split_prelu(&mut plain), 0);
        assert!(plain.initializer.is_empty());
    }
}

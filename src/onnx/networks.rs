//! The networks of a pilip graph, read back out of it: each species' chain (`export/graph.rs`) is MatMul + Add,
//! SiLU written as z·1/(1 + e^−z), …, a last MatMul + Add, a Mul by the energy scale and a Reshape; walking it
//! recovers every weight. Files written before the descriptor standardisation was folded into the first layer
//! (a Sub and a Mul on the input) are folded here. The runtime's native engine runs what this reads; training
//! starts from it when `model.init` or `model.base` names an exported file.

use crate::onnx::metadata::ModelMetadata;
use std::collections::HashMap;
use tract_onnx::pb;

/// One species' network as the graph computes it (f64): `layers[k] = (W [n_in][n_out] row-major, b, n_in, n_out)`,
/// SiLU after every layer but the last (n_out = 1), whose output is multiplied by `scale`. The input is the raw
/// descriptor (any standardisation is folded into the first layer).
pub struct NetworkWeights {
    /// `(W, b, n_in, n_out)` per layer, input first.
    pub layers: Vec<(Vec<f64>, Vec<f64>, usize, usize)>,
    /// The energy scale the last layer's output is multiplied by.
    pub scale: f64,
    /// The domain guard added to the energies, if the model has one.
    pub guard: Option<GuardWeights>,
}

/// A species' domain guard as the graph computes it (`export::graph::guard_nodes`): x = G ⊙ mask − mean,
/// p = M x, u = max(0, |p|² · inv_ref − onset), energy strength·u², gradient 4·strength·inv_ref·u·(Mᵀp) ⊙ mask.
#[derive(Clone)]
pub struct GuardWeights {
    /// 1/σ on the components the network reads, 0 elsewhere (F values).
    pub mask: Vec<f64>,
    /// μ ⊙ mask (F values).
    pub mean: Vec<f64>,
    /// The sketch M, `[rows][F]` row-major.
    pub sketch: Vec<f64>,
    /// 1 / (the largest training score).
    pub inv_ref: f64,
    /// Onset, in units of the largest training score.
    pub onset: f64,
    /// eV.
    pub strength: f64,
}

/// The guard constants of the species whose nodes are named `prefix…` (`X/`), checked against `n_features`.
fn lift_guard(graph: &GraphView, prefix: &str, n_features: usize) -> std::result::Result<GuardWeights, String> {
    let constant = |name: &str, len: Option<usize>| -> std::result::Result<Vec<f64>, String> {
        let full = format!("{prefix}guard_{name}");
        let t = graph.constants.get(full.as_str()).ok_or_else(|| format!("the domain guard has no constant '{full}'"))?;
        let v = values(t);
        match len {
            Some(n) if v.len() != n => Err(format!("'{full}' has {} values, expected {n}", v.len())),
            _ => Ok(v),
        }
    };
    let scalar = |name: &str| constant(name, Some(1)).map(|v| v[0]);
    let sketch = constant("M", None)?;
    if n_features == 0 || sketch.len() % n_features != 0 {
        return Err(format!("'{prefix}guard_M' has {} values, not rows of {n_features}", sketch.len()));
    }
    Ok(GuardWeights {
        mask: constant("mask", Some(n_features))?,
        mean: constant("mean", Some(n_features))?,
        sketch,
        inv_ref: scalar("inv_ref")?,
        onset: scalar("onset")?,
        strength: scalar("strength")?,
    })
}

/// Every species' network of a decoded pilip model, in the metadata's species order; an error says where the
/// graph departs from pilip's chain.
pub fn read_networks(proto: &pb::ModelProto, meta: &ModelMetadata) -> std::result::Result<Vec<NetworkWeights>, String> {
    let graph = proto.graph.as_ref().ok_or("no graph")?;
    let view = GraphView::new(graph);
    (0..meta.species.len())
        .map(|k| {
            let [g_name, e_name, _] = meta.io_names(k);
            lift(&view, &g_name, &e_name, meta.n_features)
        })
        .collect()
}

/// The constants of a graph by name and its nodes, for walking a species' chain.
struct GraphView<'a> {
    constants: HashMap<&'a str, &'a pb::TensorProto>,
    nodes: &'a [pb::NodeProto],
}

impl<'a> GraphView<'a> {
    fn new(graph: &'a pb::GraphProto) -> Self {
        GraphView { constants: graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect(), nodes: &graph.node }
    }

    /// The first node of type `op` that reads `value` (as its first input for MatMul, whose order matters).
    fn reader(&self, value: &str, op: &str) -> std::result::Result<&'a pb::NodeProto, String> {
        self.nodes
            .iter()
            .find(|n| n.op_type == op && if op == "MatMul" { n.input[0] == value } else { n.input.iter().any(|i| i == value) })
            .ok_or_else(|| format!("no {op} node reads '{value}'"))
    }

    /// The input of the binary `node` other than `value`, which must be a constant: (dimensions, values).
    fn operand(&self, node: &pb::NodeProto, value: &str) -> std::result::Result<(Vec<usize>, Vec<f64>), String> {
        let other = node.input.iter().find(|i| *i != value).ok_or_else(|| format!("node '{}' reads '{value}' twice", node.name))?;
        let t = self.constants.get(other.as_str()).ok_or_else(|| format!("'{other}' (read by '{}') is not a constant", node.name))?;
        let dims = t.dims.iter().map(|&d| d.max(0) as usize).collect();
        Ok((dims, values(t)))
    }
}

/// The values of a float or double constant as f64: its typed field of its element type, then little-endian raw
/// bytes (`onnx::decode` has checked that their number matches the dimensions).
fn values(t: &pb::TensorProto) -> Vec<f64> {
    use pb::tensor_proto::DataType;
    match DataType::try_from(t.data_type) {
        Ok(DataType::Float) => t
            .float_data
            .iter()
            .map(|&x| x as f64)
            .chain(t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64))
            .collect(),
        Ok(DataType::Double) => t
            .double_data
            .iter()
            .copied()
            .chain(t.raw_data.chunks_exact(8).map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])))
            .collect(),
        _ => Vec::new(),
    }
}

/// Walks the chain from the descriptor input `input` to the energies output `energies`.
fn lift(graph: &GraphView, input: &str, energies: &str, n_features: usize) -> std::result::Result<NetworkWeights, String> {
    let mut h = input.to_string();
    // Files written before the standardisation was folded into W₀: (G − μ)·(1/σ) before the first MatMul.
    let mut standardisation = None;
    if let Ok(sub) = graph.reader(&h, "Sub") {
        let (_, mean) = graph.operand(sub, &h)?;
        let mul = graph.reader(&sub.output[0], "Mul")?;
        let (_, inv_std) = graph.operand(mul, &sub.output[0])?;
        if mean.len() != n_features || inv_std.len() != n_features {
            return Err(format!("the input standardisation of '{input}' does not have {n_features} values"));
        }
        standardisation = Some((mean, inv_std));
        h = mul.output[0].clone();
    }
    let mut layers: Vec<(Vec<f64>, Vec<f64>, usize, usize)> = Vec::new();
    let mut n_in = n_features;
    loop {
        let matmul = graph.reader(&h, "MatMul")?;
        let (dims, mut w) = graph.operand(matmul, &h)?;
        if dims.len() != 2 || dims[0] != n_in || dims[1] == 0 || w.len() != dims[0] * dims[1] {
            return Err(format!("weights '{}' have dimensions {dims:?}, expected [{n_in}, n ≥ 1]", matmul.input[1]));
        }
        let n_out = dims[1];
        let add = graph.reader(&matmul.output[0], "Add")?;
        let (_, mut b) = graph.operand(add, &matmul.output[0])?;
        if b.len() != n_out {
            return Err(format!("bias of '{}' has {} values, expected {n_out}", add.name, b.len()));
        }
        if let (true, Some((mean, inv_std))) = (layers.is_empty(), &standardisation) {
            // ((G − μ)/σ) W + b = G (diag(1/σ) W) + (b − (μ/σ) W), as `export::graph` writes it today
            for r in 0..n_in {
                for c in 0..n_out {
                    b[c] -= mean[r] * inv_std[r] * w[r * n_out + c];
                    w[r * n_out + c] *= inv_std[r];
                }
            }
        }
        layers.push((w, b, n_in, n_out));
        n_in = n_out;
        let z = &add.output[0];
        if let Ok(neg) = graph.reader(z, "Neg") {
            // SiLU: z · 1/(1 + exp(−z))
            let exp = graph.reader(&neg.output[0], "Exp")?;
            let den = graph.reader(&exp.output[0], "Add")?;
            if graph.operand(den, &exp.output[0])?.1 != [1.0] {
                return Err(format!("'{}' does not add 1", den.name));
            }
            let sigmoid = graph.reader(&den.output[0], "Reciprocal")?;
            let silu = graph.reader(&sigmoid.output[0], "Mul")?;
            if !silu.input.iter().any(|i| i == z) {
                return Err(format!("'{}' does not multiply '{z}' by its sigmoid", silu.name));
            }
            h = silu.output[0].clone();
            continue;
        }
        let scaled = graph.reader(z, "Mul")?;
        let (_, scale) = graph.operand(scaled, z)?;
        // with a domain guard, its energy is added to the scaled output before the Reshape
        let (energy, guard) = match graph.reader(&scaled.output[0], "Add") {
            Ok(add) => {
                let prefix = scaled.name.strip_suffix("scaled").ok_or_else(|| format!("node '{}' is not named '…scaled'", scaled.name))?;
                (&add.output[0], Some(lift_guard(graph, prefix, n_features)?))
            }
            Err(_) => (&scaled.output[0], None),
        };
        let reshape = graph.reader(energy, "Reshape")?;
        if scale.len() != 1 || n_out != 1 || layers.len() < 2 || reshape.output[0] != energies {
            return Err(format!("the chain from '{input}' does not end in a scaled single energy '{energies}'"));
        }
        return Ok(NetworkWeights { layers, scale: scale[0], guard });
    }
}


//! The ONNX graph of a model's networks: standardised descriptors → per-atom energies and their explicit input
//! gradient ∂E_i/∂G_i (ONNX has no autodiff, so the backward pass is written out as nodes).
//!
//! Per species `X` (one independent sub-graph each; `N_X` is symbolic):
//!
//! ```text
//!   descriptors_X [N_X, F] ─ MatMul W₀' + b₀' ─► z₀ ─ SiLU ─► h₀ … ─ MatMul W_L + b_L ─► out
//!   energies_X    [N_X]    = scale · out                     (reference energies are added outside, in f64)
//!   gradients_X   [N_X, F] = ((scale·W_Lᵀ ⊙ SiLU'(z_{L-1})) W_{L-1}ᵀ ⊙ … ⊙ SiLU'(z₀)) W₀'ᵀ
//! ```
//!
//! The descriptor standardisation (G − μ)/σ is folded into the first layer (W₀' = diag(1/σ) W₀,
//! b₀' = b₀ − (μ/σ) W₀), so the widest tensors see no elementwise passes (8 % of a Cu MD step). SiLU is written
//! as `z · 1/(1 + exp(−z))` and its derivative as `s + h·(1 − s)` with `s` the sigmoid and `h = z·s`: only
//! MatMul, Add, Sub, Mul, Neg, Exp, Reciprocal and Reshape, which every engine runs in f32 and f64 (ONNX
//! `Sigmoid` was measured no faster in tract, which has it in f32 only, and 20× less accurate in the forces).
//! Files written before the folding (with Sub and Mul nodes on the input) load and run unchanged.

use crate::error::{Error, Result};
use crate::model::domain_guard::DomainGuard;
use crate::model::power_spectrum::PowerSpectrumModel;
use crate::model::{AtomicModel, Model};
use crate::onnx::metadata::{io_names, Dtype};
use tract_onnx::pb;

struct Builder {
    dtype: Dtype,
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
}

impl Builder {
    fn constant(&mut self, name: &str, dims: &[usize], values: &[f64]) -> String {
        let mut t = pb::TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: elem_type(self.dtype),
            ..Default::default()
        };
        match self.dtype {
            Dtype::F32 => t.float_data = values.iter().map(|&v| v as f32).collect(),
            Dtype::F64 => t.double_data = values.to_vec(),
        }
        self.initializers.push(t);
        name.into()
    }

    fn node(&mut self, op: &str, inputs: &[&str], output: &str) -> String {
        self.nodes.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            name: output.into(),
            op_type: op.into(),
            ..Default::default()
        });
        output.into()
    }
}

fn elem_type(dtype: Dtype) -> i32 {
    match dtype {
        Dtype::F32 => pb::tensor_proto::DataType::Float as i32,
        Dtype::F64 => pb::tensor_proto::DataType::Double as i32,
    }
}

fn value_info(name: &str, dtype: Dtype, dims: &[std::result::Result<usize, &str>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Ok(n) => Value::DimValue(*n as i64),
                Err(sym) => Value::DimParam(sym.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: elem_type(dtype),
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Transposes a row-major `[rows][cols]` matrix.
fn transpose(m: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0.0; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

/// The domain guard of species `s` as nodes on its descriptors `g` ([`crate::model::domain_guard`]): returns
/// the guard's energy `[N, 1]` and its descriptor gradient `[N, F]`. With x = G ⊙ m − μ ⊙ m (m = 1/σ on the
/// network's inputs, 0 on the components it leaves out) and M the sketch spread onto all F components, p = x Mᵀ,
/// the score s = |p|², u = Relu(s / s_max − onset), the energy κu² and the gradient (4κu / s_max) (p M) ⊙ m. The
/// constants are named `X/guard_…`: `onnx::networks` reads them by name.
fn guard_nodes(b: &mut Builder, ps: &PowerSpectrumModel, g: &DomainGuard, s: usize, input: &str, p: &dyn Fn(&str) -> String) -> (String, String) {
    let nf = ps.feature_mean[s].len();
    let kept: Vec<usize> = match ps.inputs.get(s) {
        Some(ids) => ids.iter().map(|&f| f as usize).collect(),
        None => (0..nf).collect(),
    };
    let n = kept.len();
    let rows = g.sketch[s].len().checked_div(n).unwrap_or(0);
    let mut mask = vec![0.0; nf];
    for &f in &kept {
        mask[f] = 1.0 / ps.feature_std[s][f];
    }
    let mut m = vec![0.0; rows * nf];
    for j in 0..rows {
        for (c, &f) in kept.iter().enumerate() {
            m[j * nf + f] = g.sketch[s][j * n + c];
        }
    }
    let mean_masked: Vec<f64> = ps.feature_mean[s].iter().zip(&mask).map(|(m, k)| m * k).collect();
    let mean = b.constant(&p("guard_mean"), &[nf], &mean_masked);
    let mask = b.constant(&p("guard_mask"), &[nf], &mask);
    let mt = b.constant(&p("guard_MT"), &[nf, rows], &transpose(&m, rows, nf));
    let m = b.constant(&p("guard_M"), &[rows, nf], &m);
    let ones = b.constant(&p("guard_ones"), &[rows, 1], &vec![1.0; rows]);
    let inv_ref = b.constant(&p("guard_inv_ref"), &[], &[1.0 / g.reference[s]]);
    let onset = b.constant(&p("guard_onset"), &[], &[g.onset]);
    let strength = b.constant(&p("guard_strength"), &[], &[g.strength]);
    let grad_factor = b.constant(&p("guard_grad_factor"), &[], &[4.0 * g.strength / g.reference[s]]);
    // G ⊙ m − μ ⊙ m: the descriptors' first reader in the guard is a Mul, so that a Sub on the input still
    // means a file of before the standardisation was folded (`onnx::networks`)
    let scaled_input = b.node("Mul", &[input, &mask], &p("guard_scaled_input"));
    let x = b.node("Sub", &[&scaled_input, &mean], &p("guard_x"));
    let sketched = b.node("MatMul", &[&x, &mt], &p("guard_sketched"));
    let squares = b.node("Mul", &[&sketched, &sketched], &p("guard_squares"));
    let score = b.node("MatMul", &[&squares, &ones], &p("guard_score"));
    let rel = b.node("Mul", &[&score, &inv_ref], &p("guard_relative"));
    let excess = b.node("Sub", &[&rel, &onset], &p("guard_excess"));
    let u = b.node("Relu", &[&excess], &p("guard_u"));
    let u2 = b.node("Mul", &[&u, &u], &p("guard_u_sq"));
    let energy = b.node("Mul", &[&u2, &strength], &p("guard_energy"));
    let c = b.node("Mul", &[&u, &grad_factor], &p("guard_c"));
    let cp = b.node("Mul", &[&sketched, &c], &p("guard_c_p"));
    let back = b.node("MatMul", &[&cp, &m], &p("guard_back"));
    let gradient = b.node("Mul", &[&back, &mask], &p("guard_gradient"));
    (energy, gradient)
}

/// The graph of `model` in `dtype`: per species, its descriptors in, atomic energies (without reference energies)
/// and their descriptor gradients out.
pub fn build_graph(model: &Model, dtype: Dtype) -> Result<pb::GraphProto> {
    match &model.atomic {
        AtomicModel::PowerSpectrum(m) | AtomicModel::Bispectrum(m) => power_spectrum_graph(model, m, dtype),
    }
}

/// Builds the graph of all species' networks. Fails if a network has no hidden layer (the config forbids it).
fn power_spectrum_graph(model: &Model, ps: &PowerSpectrumModel, dtype: Dtype) -> Result<pb::GraphProto> {
    let mut b = Builder { dtype, nodes: Vec::new(), initializers: Vec::new() };
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    let one = b.constant("one", &[], &[1.0]);
    let flat = {
        b.initializers.push(pb::TensorProto {
            name: "flat_shape".into(),
            dims: vec![1],
            data_type: pb::tensor_proto::DataType::Int64 as i32,
            int64_data: vec![-1],
            ..Default::default()
        });
        "flat_shape".to_string()
    };
    for (s, &z) in model.species.iter().enumerate() {
        let sym = crate::elements::symbol(z).unwrap_or("X");
        let [g_name, e_name, d_name] = io_names(sym);
        let net = ps.full_input_network(s);
        let sizes = &net.sizes;
        let n_layers = sizes.len() - 1;
        if n_layers < 2 || *sizes.last().unwrap_or(&0) != 1 {
            return Err(Error::invalid(format!(
                "network of {sym} has layer sizes {sizes:?}; export needs at least one hidden layer and one output"
            )));
        }
        let nf = sizes[0];
        let n_sym = format!("n_{sym}");
        inputs.push(value_info(&g_name, dtype, &[Err(&n_sym), Ok(nf)]));
        outputs.push(value_info(&e_name, dtype, &[Err(&n_sym)]));
        outputs.push(value_info(&d_name, dtype, &[Err(&n_sym), Ok(nf)]));

        let p = |name: &str| format!("{sym}/{name}");
        let (mean, inv_std): (&[f64], Vec<f64>) = (&ps.feature_mean[s], ps.feature_std[s].iter().map(|sd| 1.0 / sd).collect());
        let mut h = g_name.clone();
        let mut offset = 0;
        let mut weights = Vec::new();
        let mut saved = Vec::new();
        for k in 0..n_layers {
            let (i, o) = (sizes[k], sizes[k + 1]);
            let mut w = net.params[offset..offset + i * o].to_vec();
            let mut bias = net.params[offset + i * o..offset + i * o + o].to_vec();
            offset += i * o + o;
            if k == 0 {
                // ((G − μ)/σ) W₀ + b₀ = G (diag(1/σ) W₀) + (b₀ − (μ/σ) W₀): the standardisation folded into the
                // first layer, so the widest tensors see no extra passes
                for r in 0..i {
                    for c in 0..o {
                        bias[c] -= mean[r] * inv_std[r] * w[r * o + c];
                        w[r * o + c] *= inv_std[r];
                    }
                }
            }
            let wn = b.constant(&p(&format!("W{k}")), &[i, o], &w);
            let bn = b.constant(&p(&format!("b{k}")), &[o], &bias);
            weights.push(w);
            let mm = b.node("MatMul", &[&h, &wn], &p(&format!("matmul{k}")));
            let zk = b.node("Add", &[&mm, &bn], &p(&format!("z{k}")));
            if k + 1 == n_layers {
                h = zk;
                break;
            }
            let neg = b.node("Neg", &[&zk], &p(&format!("neg{k}")));
            let ex = b.node("Exp", &[&neg], &p(&format!("exp{k}")));
            let den = b.node("Add", &[&ex, &one], &p(&format!("den{k}")));
            let sig = b.node("Reciprocal", &[&den], &p(&format!("sigmoid{k}")));
            h = b.node("Mul", &[&zk, &sig], &p(&format!("h{k}")));
            saved.push((sig, h.clone()));
        }
        let scale = b.constant(&p("scale"), &[], &[model.energy_scale]);
        let mut scaled = b.node("Mul", &[&h, &scale], &p("scaled"));
        let guard = ps.domain_guard.as_ref().filter(|g| !g.sketch[s].is_empty()).map(|g| guard_nodes(&mut b, ps, g, s, &g_name, &p));
        if let Some((energy, _)) = &guard {
            scaled = b.node("Add", &[&scaled, energy], &p("scaled_guarded"));
        }
        b.node("Reshape", &[&scaled, &flat], &e_name);
        // Backward: δ of the last hidden activation is the constant row scale·W_Lᵀ (broadcast over atoms).
        let last = n_layers - 1;
        let w_last: Vec<f64> = weights[last].iter().map(|w| w * model.energy_scale).collect();
        let mut delta = b.constant(&p("dh_last"), &[1, sizes[last]], &w_last);
        for k in (0..last).rev() {
            let (sig, hk) = &saved[k];
            // SiLU'(z) = s + h·(1 − s)
            let one_minus = b.node("Sub", &[&one, sig], &p(&format!("one_minus_s{k}")));
            let hs = b.node("Mul", &[hk, &one_minus], &p(&format!("h_one_minus_s{k}")));
            let dsilu = b.node("Add", &[sig, &hs], &p(&format!("dsilu{k}")));
            let dz = b.node("Mul", &[&delta, &dsilu], &p(&format!("dz{k}")));
            let (i, o) = (sizes[k], sizes[k + 1]);
            // W₀ already holds the standardisation: ∂E/∂G = ∂E/∂z₀ (diag(1/σ) W₀)ᵀ
            let wt = transpose(&weights[k], i, o);
            let out_name = match (k, &guard) {
                (0, None) => d_name.clone(),
                (0, Some(_)) => p("dG_networks"),
                _ => p(&format!("dh{}", k - 1)),
            };
            let wtn = b.constant(&p(&format!("W{k}T")), &[o, i], &wt);
            delta = b.node("MatMul", &[&dz, &wtn], &out_name);
        }
        if let Some((_, gradient)) = &guard {
            b.node("Add", &[&delta, gradient], &d_name);
        }
    }
    Ok(pb::GraphProto {
        node: b.nodes,
        name: "pilip".into(),
        initializer: b.initializers,
        input: inputs,
        output: outputs,
        ..Default::default()
    })
}

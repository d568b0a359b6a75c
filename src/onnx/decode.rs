//! Reading a model file: ONNX decoding, the metadata, the graph checksum and the graph's signature (names,
//! element types and shapes of its inputs and outputs), so that engines only ever see graphs they can run.

use crate::error::{Error, Result};
use crate::onnx::metadata::{checksum, Dtype, ModelMetadata};
use prost::Message;
use tract_onnx::pb;

/// Decodes an ONNX file and checks that it is a pilip model this runtime can run: metadata, checksum, and the
/// graph's inputs and outputs (names, element type, shapes).
pub fn decode(bytes: &[u8], source: &str) -> Result<(pb::ModelProto, ModelMetadata)> {
    let proto = pb::ModelProto::decode(bytes).map_err(|e| {
        Error::model(format!("{source}: not a readable ONNX file ({e}); is it truncated or not an ONNX model?"))
    })?;
    let props = proto.metadata_props.iter().map(|p| (p.key.clone(), p.value.clone())).collect();
    let meta = ModelMetadata::from_props(&props, source)?;
    let graph = proto.graph.as_ref().ok_or_else(|| Error::model(format!("{source}: the ONNX file has no graph")))?;
    let sum = checksum(&graph.encode_to_vec());
    if sum != meta.checksum {
        return Err(Error::model(format!(
            "{source}: graph checksum {sum} does not match the metadata's {}; the file was modified or corrupted — export it again",
            meta.checksum
        )));
    }
    check_signature(graph, &meta).map_err(|e| Error::model(format!("{source}: {e}")))?;
    check_structure(graph).map_err(|e| Error::model(format!("{source}: malformed model graph: {e}")))?;
    Ok((proto, meta))
}

/// Operators pilip writes, with their input counts (`export/graph.rs`).
const OPERATORS: [(&str, usize); 9] =
    [("MatMul", 2), ("Add", 2), ("Sub", 2), ("Mul", 2), ("Reshape", 2), ("Neg", 1), ("Exp", 1), ("Reciprocal", 1), ("Relu", 1)];

/// Most values one constant tensor may hold (the largest pilip network is far below it).
const MAX_TENSOR_VALUES: usize = 1 << 28;

/// The graph is one pilip could have written: known operators with their input counts, every value defined
/// once before it is used, every output produced, and constants whose shapes match their data. Engines may
/// panic or try huge allocations on graphs that break these rules, so they never see one.
fn check_structure(graph: &pb::GraphProto) -> std::result::Result<(), String> {
    use std::collections::HashSet;
    let mut defined: HashSet<&str> = graph.input.iter().map(|v| v.name.as_str()).collect();
    for t in &graph.initializer {
        check_constant(t)?;
        if !defined.insert(t.name.as_str()) {
            return Err(format!("value '{}' is defined twice", t.name));
        }
    }
    for node in &graph.node {
        let arity = OPERATORS
            .iter()
            .find(|(op, _)| *op == node.op_type)
            .map(|&(_, n)| n)
            .ok_or_else(|| format!("operator '{}' is not one pilip writes", node.op_type))?;
        if node.input.len() != arity || node.output.len() != 1 {
            return Err(format!(
                "node '{}' ({}) has {} inputs and {} outputs, expected {arity} and 1",
                node.name,
                node.op_type,
                node.input.len(),
                node.output.len()
            ));
        }
        if let Some(missing) = node.input.iter().find(|i| !defined.contains(i.as_str())) {
            return Err(format!("node '{}' reads '{missing}', which no earlier node, input or constant defines", node.name));
        }
        if !defined.insert(node.output[0].as_str()) {
            return Err(format!("value '{}' is defined twice", node.output[0]));
        }
    }
    if let Some(missing) = graph.output.iter().find(|o| !defined.contains(o.name.as_str())) {
        return Err(format!("output '{}' is not computed by any node", missing.name));
    }
    Ok(())
}

/// A constant's dimensions are non-negative, bounded, and agree with the number of values it stores.
fn check_constant(t: &pb::TensorProto) -> std::result::Result<(), String> {
    use pb::tensor_proto::DataType;
    let count = t.dims.iter().try_fold(1usize, |n, &d| {
        usize::try_from(d).ok().and_then(|d| n.checked_mul(d)).filter(|&n| n <= MAX_TENSOR_VALUES)
    });
    let count = count.ok_or_else(|| format!("constant '{}' has dimensions {:?}", t.name, t.dims))?;
    let (stored, width) = match DataType::try_from(t.data_type) {
        Ok(DataType::Float) => (t.float_data.len(), 4),
        Ok(DataType::Double) => (t.double_data.len(), 8),
        Ok(DataType::Int64) => (t.int64_data.len(), 8),
        _ => return Err(format!("constant '{}' has element type {}, expected float, double or int64", t.name, t.data_type)),
    };
    let stored = if t.raw_data.is_empty() { stored } else { t.raw_data.len() / width + stored };
    if stored != count || t.raw_data.len() % width != 0 {
        return Err(format!("constant '{}' of dimensions {:?} stores {stored} values", t.name, t.dims));
    }
    Ok(())
}

fn check_signature(graph: &pb::GraphProto, meta: &ModelMetadata) -> std::result::Result<(), String> {
    use pb::tensor_shape_proto::dimension::Value;
    let want_type = match meta.dtype {
        Dtype::F32 => pb::tensor_proto::DataType::Float as i32,
        Dtype::F64 => pb::tensor_proto::DataType::Double as i32,
    };
    let describe = |v: &pb::ValueInfoProto| -> Option<(i32, Vec<Option<i64>>)> {
        match v.r#type.as_ref()?.value.as_ref()? {
            pb::type_proto::Value::TensorType(t) => Some((
                t.elem_type,
                t.shape
                    .as_ref()?
                    .dim
                    .iter()
                    .map(|d| match d.value {
                        Some(Value::DimValue(n)) => Some(n),
                        _ => None,
                    })
                    .collect(),
            )),
        }
    };
    let ns = meta.species.len();
    if graph.input.len() != ns || graph.output.len() != 2 * ns {
        return Err(format!(
            "graph has {} inputs and {} outputs; a pilip model with {ns} species has {ns} and {}",
            graph.input.len(),
            graph.output.len(),
            2 * ns
        ));
    }
    let nf = meta.n_features as i64;
    for k in 0..ns {
        let [g, e, d] = meta.io_names(k);
        let checks = [
            (&graph.input[k], g, vec![None, Some(nf)]),
            (&graph.output[2 * k], e, vec![None]),
            (&graph.output[2 * k + 1], d, vec![None, Some(nf)]),
        ];
        for (v, name, shape) in checks {
            if v.name != name {
                return Err(format!("graph value '{}' found where '{name}' was expected", v.name));
            }
            match describe(v) {
                Some((t, s)) if t == want_type && s == shape => {}
                _ => {
                    return Err(format!(
                        "graph value '{name}' does not have element type {} and shape {shape:?} (None = any)",
                        meta.dtype.name()
                    ))
                }
            }
        }
    }
    Ok(())
}

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
    Ok((proto, meta))
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

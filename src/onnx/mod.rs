//! The model file format: one ONNX file whose `metadata_props` make it self-describing. This layer reads and
//! checks files (metadata, decoding, the graph's signature); writing them is `export`'s job, running them the
//! runtime's.
pub mod decode;
pub mod metadata;
pub mod networks;

/// ONNX opset the graphs are written against (tract is tested with 9–18; onnxruntime reads it).
pub const OPSET: i64 = 17;
/// ONNX IR version matching opset 17.
pub const IR_VERSION: i64 = 8;

//! ONNX export of trained models and the metadata that makes the file self-describing.
pub mod export;
pub mod graph;
pub mod metadata;

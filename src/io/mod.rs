//! File formats.
pub mod extxyz;

#!/usr/bin/env bash
# Runs every test of the project (Rust unit, integration and CLI tests).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --locked "$@"

#!/usr/bin/env bash
# Long fuzzing run (issue 15): every target of examples/fuzz for SECONDS each (default 600), one JSON line per
# target with the inputs tried and the panics, aborts, hangs and other findings (all must be 0). Inputs that
# found something are saved in OUT (default target/fuzz) and replay with
#   target/release/examples/fuzz --replay TARGET FILE
# Usage: scripts/fuzz.sh [SECONDS] [SEED] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-600}
SEED=${2:-$(date +%s)}
OUT=${3:-target/fuzz}
cargo build --release --locked --example fuzz
# Run a copy, so a rebuild during the run does not replace the binary under the supervisor.
BIN=$(mktemp -d)/fuzz
cp target/release/examples/fuzz "$BIN"
status=0
for target in extxyz config model compute neighbors; do
  "$BIN" --seconds "$SECONDS_PER_TARGET" --seed "$SEED" --out "$OUT" "$target" || status=1
done
rm -f "$BIN"
exit $status

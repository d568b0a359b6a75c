#!/usr/bin/env bash
# Regenerates every number, table and figure of docs/results.md (resumable: finished runs are reused).
#   scripts/piwsl_results.sh            # pilip suites + MD robustness (~3 h on 2 cores from scratch)
#   WITH_SGDML=1 scripts/piwsl_results.sh   # + the sGDML baseline (installs sgdml into /tmp/sg, ~10 min more)
# Outputs: bench_runs/piwsl/*/ (results.json, summary.csv, runs, plots), docs/results_tables.md, docs/figures/*.png
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin pilip
P=target/release/pilip
B=examples/configs/bench
for spec in piwsl_sweep_ethanol piwsl_sweep_aspirin piwsl_sweep_aspirin_eps; do
    $P bench-piwsl "$B/$spec.toml" --set temperature_k=500.0 --quiet
done
S=$B/piwsl_aspirin.toml
$P bench-piwsl $S --quiet
$P bench-piwsl $S --quiet --set 'sizes=[100]' \
    --set 'variants=["standard","pitc","pitc_pisc","weak","pitc_e0.01_w20","pitc_pisc_e0.01_w20","pitc2_e0.05_w1000","weak_e0.01_w20"]'
$P bench-piwsl $B/piwsl_cu.toml --quiet
$P bench-piwsl $B/piwsl_ethanol.toml --quiet --set 'variants=["standard","pitc_pisc"]'
python3 scripts/piwsl_md.py bench_runs/piwsl/aspirin --time-ps 10 --md-seeds 2 \
    --cells energy/standard/100,energy/pitc_pisc/100,forces/standard/100,forces/pitc_pisc/100,energy/standard/750,energy/pitc_pisc/750,forces/standard/750,forces/pitc_pisc/750
if [ "${WITH_SGDML:-0}" = 1 ]; then
    [ -x /tmp/sg/bin/python ] || { python3 -m venv /tmp/sg && /tmp/sg/bin/pip install -q sgdml; }
    /tmp/sg/bin/python scripts/compare_sgdml.py bench_runs/piwsl/aspirin --sizes 100,250 --seeds 1,2,3
fi
# the summary of the whole suite last, so results.json / plots cover every variant at every size
$P bench-piwsl $S --quiet --report-only
$P bench-piwsl $B/piwsl_ethanol.toml --quiet --report-only
python3 scripts/piwsl_tables.py bench_runs/piwsl/aspirin bench_runs/piwsl/sweep_aspirin_eps \
    bench_runs/piwsl/sweep_aspirin bench_runs/piwsl/ethanol bench_runs/piwsl/sweep_ethanol bench_runs/piwsl/cu \
    > docs/results_tables.md
mkdir -p docs/figures
for suite in aspirin ethanol; do
    for f in forces_rmse_energy energy_rmse_energy forces_rmse_forces energy_rmse_forces; do
        cp "bench_runs/piwsl/$suite/$f.png" "docs/figures/${suite}_$f.png"
    done
done
echo "tables: docs/results_tables.md, figures: docs/figures/"

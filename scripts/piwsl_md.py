"""MD robustness of models from a PIWSL benchmark suite: NVE MD with `pilip md-stability` from the first test
structure, for the best checkpoints of chosen (labels, variant, size) cells and every training seed.

Usage: python3 scripts/piwsl_md.py BENCH_DIR --cells energy/standard/100,energy/pitc_pisc/100 \
           [--seeds 1,2,3] [--md-seeds 2] [--time-ps 20] [--temperature 300] [--timestep 0.5] [--pilip PATH]
Writes BENCH_DIR/md/<labels>_<variant>_n<size>_s<seed>.json (+ .png) per model (reused when present) and
BENCH_DIR/md_robustness.json: per cell the stable time (mean, min over all MD runs), the fraction of runs that
completed, and the energy drift per atom of the completed runs.
"""
import argparse, json, subprocess, statistics
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench_dir", type=Path)
    ap.add_argument("--cells", required=True, help="comma-separated labels/variant/size")
    ap.add_argument("--seeds", default="1,2,3", help="training seeds")
    ap.add_argument("--md-seeds", type=int, default=2, help="MD runs (velocity seeds) per model")
    ap.add_argument("--time-ps", type=float, default=20.0)
    ap.add_argument("--temperature", type=float, default=300.0)
    ap.add_argument("--timestep", type=float, default=0.5)
    ap.add_argument("--pilip", default="target/release/pilip")
    a = ap.parse_args()
    md_dir = a.bench_dir / "md"
    md_dir.mkdir(exist_ok=True)
    start = a.bench_dir / "data" / "test.extxyz"
    summary = {}
    for cell in a.cells.split(","):
        labels, variant, size = cell.split("/")
        runs = []
        for seed in a.seeds.split(","):
            ckpt = a.bench_dir / "runs" / labels / variant / f"n{size}_s{seed}" / "checkpoints" / "best.ckpt"
            if not ckpt.exists():
                raise SystemExit(f"{ckpt}: missing; run the suite for {cell} seed {seed} first")
            out = md_dir / f"{labels}_{variant}_n{size}_s{seed}.json"
            if not out.exists():
                subprocess.run([a.pilip, "md-stability", str(ckpt), str(start), "--temperature", str(a.temperature),
                                "--timestep", str(a.timestep), "--time-ps", str(a.time_ps),
                                "--seeds", str(a.md_seeds), "-o", str(out)], check=True, stdout=subprocess.DEVNULL)
            runs += json.loads(out.read_text())["seeds"]
        times = [r["stable_time"] for r in runs]
        done = [r for r in runs if r["completed"]]
        summary[cell] = {
            "md_runs": len(runs),
            "stable_time_ps_mean": statistics.mean(times),
            "stable_time_ps_min": min(times),
            "completed_fraction": len(done) / len(runs),
            "drift_per_atom_ev_completed_mean": statistics.mean(abs(r["energy_drift_per_atom"]) for r in done) if done else None,
            "failures": sorted({r["failure"] for r in runs if r["failure"]}),
        }
        s = summary[cell]
        print(f"{cell}: stable {s['stable_time_ps_mean']:.2f} ps mean, {s['stable_time_ps_min']:.2f} min, "
              f"{100 * s['completed_fraction']:.0f}% of {len(runs)} runs completed {a.time_ps} ps", flush=True)
    (a.bench_dir / "md_robustness.json").write_text(json.dumps(
        {"temperature_K": a.temperature, "timestep_fs": a.timestep, "time_ps": a.time_ps, "cells": summary}, indent=1))


if __name__ == "__main__":
    main()

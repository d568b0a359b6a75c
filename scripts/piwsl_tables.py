"""Markdown tables of the PIWSL benchmark results (docs/results_tables.md is this script's output).

Usage: python3 scripts/piwsl_tables.py bench_runs/piwsl/aspirin [more suite dirs...] > docs/results_tables.md
Aggregates every finished run under each suite's runs/ (mean ± sample std over seeds), takes the spec and the
thermal curvature from its results.json, and when present its
sgdml.json (scripts/compare_sgdml.py) and md_robustness.json (scripts/piwsl_md.py).
"""
import json, math, sys
from pathlib import Path


def pm(x, digits):
    m, s = x
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "–"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def paired_ratio(std_runs, var_runs, key):
    """Mean ± std over seeds of standard/variant per seed (same training set and split for a seed)."""
    a = {r["seed"]: r["test"][key] for r in std_runs}
    b = {r["seed"]: r["test"][key] for r in var_runs}
    seeds = sorted(set(a) & set(b))
    return mean_std([a[k] / b[k] for k in seeds]), len(seeds)


RUNS = {}  # (labels, variant, size) -> the finished runs of the suite being printed


def mean_std(v):
    v = [x for x in v if x is not None]
    if not v:
        return (None, None)
    m = sum(v) / len(v)
    return (m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0)


def aggregate(d: Path):
    """Mean ± std over seeds of every finished run under d/runs (all variants ever run, not only the last selection)."""
    groups = {}
    for f in sorted(d.glob("runs/*/*/*/bench_result.json")):
        r = json.loads(f.read_text())
        groups.setdefault((r["labels"], r["variant"], r["size"]), []).append(r)
    out = []
    RUNS.clear()
    RUNS.update(groups)
    for (labels, variant, size), rs in groups.items():
        t = [r["test"] for r in rs]
        out.append({"labels": labels, "variant": variant, "size": size, "n_seeds": len(rs),
                    "energy_rmse_mev_per_atom": mean_std([x["energy_rmse_mev_per_atom"] for x in t]),
                    "forces_rmse_mev_per_A": mean_std([x["forces_rmse_mev_per_A"] for x in t]),
                    "forces_mae_mev_per_A": mean_std([x["forces_mae_mev_per_A"] for x in t]),
                    "curvature_ev_per_A2": mean_std([r.get("curvature_ev_per_A2", r.get("curvature_ev_per_a2")) for r in rs]),
                    "stress_rmse_mev_per_A3": mean_std([x.get("stress_rmse_mev_per_A3") for x in t]),
                    "train_seconds": mean_std([r["train_seconds"] for r in rs])})
    return out


def suite(d: Path):
    res = json.loads((d / "results.json").read_text())
    spec, summary = res["spec"], aggregate(d)
    name = d.name
    print(f"## Suite `{name}` ({spec['config']}, test = {spec['n_test']} structures, {spec['test_split']} split)\n")
    if not summary:
        print("(no finished runs)\n")
        return
    kth = res.get("test_thermal_curvature_ev_per_A2")
    if kth:
        print(f"Thermal curvature of the test set ⟨F²⟩/k_BT at {spec['temperature_k']:.0f} K: **{kth:.1f} eV/Å²** "
              "(the reference surface's mean tr H / 3N).\n")
    for labels in ("energy", "forces"):
        rows = [a for a in summary if a["labels"] == labels]
        if not rows:
            continue
        title = "energy-only training" if labels == "energy" else "training with forces"
        print(f"### {title}\n")
        stress = any(a["stress_rmse_mev_per_A3"][0] is not None for a in rows)
        print("| size | variant | seeds | E RMSE (meV/atom) | F RMSE (meV/Å) | F MAE (meV/Å) |"
              + (" stress RMSE (meV/Å³) |" if stress else "") + " curvature (eV/Å²) | train time (s) |")
        print("|---:|---|---:|---:|---:|---:|" + ("---:|" if stress else "") + "---:|---:|")
        for a in sorted(rows, key=lambda a: (a["size"], a["variant"] != "standard", a["variant"])):
            print(f"| {a['size']} | {a['variant']} | {a['n_seeds']} | {pm(a['energy_rmse_mev_per_atom'], 2)} | "
                  f"{pm(a['forces_rmse_mev_per_A'], 0)} | {pm(a['forces_mae_mev_per_A'], 0)} | "
                  + (f"{pm(a['stress_rmse_mev_per_A3'], 2)} | " if stress else "")
                  + f"{pm(a['curvature_ev_per_A2'], 1)} | {a['train_seconds'][0]:.0f} |")
        print()
        std = {a["size"]: a for a in rows if a["variant"] == "standard"}
        others = sorted({a["variant"] for a in rows} - {"standard"})
        if std and others:
            print(f"Ratios standard / variant ({title}; > 1 means the variant is better), paired by seed (same training "
                  "set), mean ± std over the seeds:\n")
            print("| size | variant | seeds | E RMSE ratio | F RMSE ratio |")
            print("|---:|---|---:|---:|---:|")
            for a in sorted(rows, key=lambda a: (a["size"], a["variant"])):
                if a["variant"] == "standard" or a["size"] not in std:
                    continue
                s_runs, v_runs = RUNS[(labels, "standard", a["size"])], RUNS[(labels, a["variant"], a["size"])]
                (re_, n), (rf, _) = (paired_ratio(s_runs, v_runs, "energy_rmse_mev_per_atom"),
                                     paired_ratio(s_runs, v_runs, "forces_rmse_mev_per_A"))
                print(f"| {a['size']} | {a['variant']} | {n} | {pm(re_, 2)} | {pm(rf, 2)} |")
            print()
    sg = d / "sgdml.json"
    if sg.exists():
        s = json.loads(sg.read_text())["summary"]
        print("### sGDML on the same splits (forces + energies)\n")
        print("| size | seeds | E RMSE (meV/atom) | F RMSE (meV/Å) | F MAE (meV/Å) | train time (s) | ms / structure |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for size, r in sorted(s.items(), key=lambda kv: int(kv[0])):
            print(f"| {size} | {r['n_seeds']} | {pm(r['energy_rmse_mev_per_atom'], 2)} | {pm(r['forces_rmse_mev_per_A'], 0)} | "
                  f"{pm(r['forces_mae_mev_per_A'], 0)} | {r['train_seconds'][0]:.0f} | {r['ms_per_structure'][0]:.1f} |")
        print()
    md = d / "md_robustness.json"
    if md.exists():
        m = json.loads(md.read_text())
        print(f"### MD robustness (NVE, {m['temperature_K']:.0f} K start, {m['timestep_fs']} fs, {m['time_ps']} ps per run)\n")
        print("| labels / variant / size | MD runs | stable time mean (ps) | min (ps) | completed | |ΔE| per atom of completed runs (meV) | failures |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for cell, r in m["cells"].items():
            drift = r["drift_per_atom_ev_completed_mean"]
            fails = "; ".join(sorted({f.split(':')[0] for f in r["failures"]})) or "–"
            print(f"| {cell} | {r['md_runs']} | {r['stable_time_ps_mean']:.2f} | {r['stable_time_ps_min']:.2f} | "
                  f"{100 * r['completed_fraction']:.0f} % | {'–' if drift is None else f'{1000 * drift:.3f}'} | {fails} |")
        print()


print("<!-- generated by scripts/piwsl_tables.py from bench_runs/piwsl/*; do not edit by hand -->\n")
for d in sys.argv[1:]:
    suite(Path(d))

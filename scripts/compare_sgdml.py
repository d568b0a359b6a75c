"""sGDML baseline on exactly the splits of a pilip PIWSL benchmark suite (kept outside the test suite: sGDML is a
large install and needs force labels, so it is compared with the suite's force-trained runs).

Usage:  python3 -m venv /tmp/sg && /tmp/sg/bin/pip install sgdml
        /tmp/sg/bin/python scripts/compare_sgdml.py BENCH_DIR --sizes 100,250 --seeds 1,2,3
For every (size, seed) the train/validation indices come from BENCH_DIR/runs/forces/standard/n{size}_s{seed}/
split.json (into BENCH_DIR/data/pool.extxyz) and the test set is BENCH_DIR/data/test.extxyz, so sGDML and pilip see
the same structures. The validation set picks sigma. Writes BENCH_DIR/sgdml.json (per run and mean ± std over
seeds: energy MAE/RMSE in meV/atom, force MAE/RMSE in meV/Å, training time, time per single-structure prediction)
and prints one line per run.
"""
import argparse, json, re, sys, time
from pathlib import Path
import numpy as np

if not hasattr(np, "in1d"):  # sGDML 1.0.3 still calls np.in1d, removed in NumPy 2.4
    np.in1d = np.isin
from sgdml.train import GDMLTrain
from sgdml.predict import GDMLPredict

Z = {"H": 1, "C": 6, "N": 7, "O": 8}


def read(path, energy_key="REF_energy"):
    """Extended XYZ written by pilip (species, positions, then the three force columns)."""
    lines = Path(path).read_text().splitlines()
    i, R, E, F, z = 0, [], [], [], None
    while i < len(lines):
        n = int(lines[i])
        e = float(re.search(energy_key + r"=(\S+)", lines[i + 1]).group(1))
        rows = [l.split() for l in lines[i + 2:i + 2 + n]]
        z = np.array([Z[r[0]] for r in rows])
        R.append([[float(x) for x in r[1:4]] for r in rows])
        F.append([[float(x) for x in r[4:7]] for r in rows])
        E.append(e)
        i += 2 + n
    return z, np.array(R), np.array(E), np.array(F)


def dataset(z, R, E, F, name):
    # string fields as numpy arrays, as sGDML's own .npz loader gives them
    return {"type": np.array("d"), "name": np.array(name), "theory": np.array("GFN2-xTB"), "z": z, "R": R,
            "E": E[:, None], "F": F, "r_unit": np.array("Ang"), "e_unit": np.array("eV"), "md5": np.array(name)}


def run(gdml, pool, test, split):
    z, R, E, F = pool
    tr, va = np.array(split["train"]), np.array(split["valid"])
    train, valid = dataset(z, R[tr], E[tr], F[tr], "train"), dataset(z, R[va], E[va], F[va], "valid")
    best = None
    for sig in (10, 20, 30, 40, 60):
        task = gdml.create_task(train, len(tr), valid, len(va), sig=sig, lam=1e-10, use_sym=True)
        t0 = time.time()
        model = gdml.train(task)
        tt = time.time() - t0
        _, f = GDMLPredict(model).predict(R[va].reshape(len(va), -1))
        mae = np.abs(f.reshape(F[va].shape) - F[va]).mean()
        if best is None or mae < best[0]:
            best = (mae, sig, model, tt)
    _, sig, model, tt = best
    _, Rt, Et, Ft = test
    pred = GDMLPredict(model)
    e, f = pred.predict(Rt.reshape(len(Rt), -1))
    f = f.reshape(Ft.shape)
    t1 = time.time()
    for k in range(20):
        pred.predict(Rt[k:k + 1].reshape(1, -1))
    na = len(z)
    de = (e.ravel() - Et) / na
    return {"sigma": sig, "train_seconds": tt,
            "energy_mae_mev_per_atom": 1000 * np.abs(de).mean(),
            "energy_rmse_mev_per_atom": 1000 * np.sqrt((de ** 2).mean()),
            "forces_mae_mev_per_A": 1000 * np.abs(f - Ft).mean(),
            "forces_rmse_mev_per_A": 1000 * np.sqrt(((f - Ft) ** 2).mean()),
            "ms_per_structure": 1000 * (time.time() - t1) / 20}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench_dir", type=Path)
    ap.add_argument("--sizes", required=True, help="comma-separated training-set sizes")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--energy-key", default="REF_energy")
    a = ap.parse_args()
    pool = read(a.bench_dir / "data" / "pool.extxyz", a.energy_key)
    test = read(a.bench_dir / "data" / "test.extxyz", a.energy_key)
    out = a.bench_dir / "sgdml.json"
    results = json.loads(out.read_text())["runs"] if out.exists() else []
    done = {(r["size"], r["seed"]) for r in results}
    gdml = GDMLTrain()  # sGDML allows one instance per process
    for size in map(int, a.sizes.split(",")):
        for seed in map(int, a.seeds.split(",")):
            if (size, seed) in done:
                continue
            split_path = a.bench_dir / "runs" / "forces" / "standard" / f"n{size}_s{seed}" / "split.json"
            if not split_path.exists():
                sys.exit(f"{split_path}: missing; run the pilip suite (forces, standard) for this size and seed first")
            r = {"size": size, "seed": seed, **run(gdml, pool, test, json.loads(split_path.read_text()))}
            print(f"sGDML n={size} seed={seed} sigma={r['sigma']}: E RMSE {r['energy_rmse_mev_per_atom']:.2f} meV/atom, "
                  f"F MAE {r['forces_mae_mev_per_A']:.1f} RMSE {r['forces_rmse_mev_per_A']:.1f} meV/Å, "
                  f"train {r['train_seconds']:.0f} s, {r['ms_per_structure']:.1f} ms/structure", flush=True)
            results.append(r)
            summary = {}
            for s in sorted({x["size"] for x in results}):
                rs = [x for x in results if x["size"] == s]
                summary[str(s)] = {k: [float(np.mean([x[k] for x in rs])), float(np.std([x[k] for x in rs], ddof=1)) if len(rs) > 1 else 0.0]
                                   for k in ("energy_mae_mev_per_atom", "energy_rmse_mev_per_atom", "forces_mae_mev_per_A",
                                             "forces_rmse_mev_per_A", "train_seconds", "ms_per_structure")}
                summary[str(s)]["n_seeds"] = len(rs)
            tmp = out.with_suffix(".json.tmp")
            tmp.write_text(json.dumps({"runs": results, "summary": summary}, indent=1))
            tmp.replace(out)


if __name__ == "__main__":
    main()

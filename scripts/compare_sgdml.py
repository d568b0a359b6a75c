"""sGDML baseline on exactly the split of a pilip run (kept outside the test suite: sGDML is a large install).

Usage:  python -m venv /tmp/sg && /tmp/sg/bin/pip install sgdml
        /tmp/sg/bin/python scripts/compare_sgdml.py DATA.extxyz RUN_DIR/split.json
The split (train / validation / test indices) is read from a pilip run directory, so both tools see exactly
the same structures; validation picks sigma. Prints the test energy MAE (meV/atom) and force MAE/RMSE (meV/Å)
of the best sigma, and the time per single-structure prediction.
"""
import sys, time, re, json
import numpy as np

if not hasattr(np, "in1d"):  # sGDML 1.0.3 still calls np.in1d, removed in NumPy 2.4
    np.in1d = np.isin
from sgdml.train import GDMLTrain
from sgdml.predict import GDMLPredict

path = sys.argv[1]
split_json = json.load(open(sys.argv[2]))
Z = {"H": 1, "C": 6, "N": 7, "O": 8}


def read(path):
    lines = open(path).read().splitlines()
    i, R, E, F, z = 0, [], [], [], None
    while i < len(lines):
        n = int(lines[i]); e = float(re.search(r"REF_energy=(\S+)", lines[i + 1]).group(1))
        rows = [l.split() for l in lines[i + 2:i + 2 + n]]
        z = np.array([Z[r[0]] for r in rows])
        R.append([[float(x) for x in r[1:4]] for r in rows]); F.append([[float(x) for x in r[4:7]] for r in rows])
        E.append(e); i += 2 + n
    return z, np.array(R), np.array(E), np.array(F)


z, R, E, F = read(path)
def ds(idx, name):
    # string fields as numpy arrays, as sGDML's own .npz loader gives them
    d = {"type": np.array("d"), "name": np.array(name), "theory": np.array("GFN2-xTB"), "z": z, "R": R[idx],
         "E": E[idx, None], "F": F[idx], "r_unit": np.array("Ang"), "e_unit": np.array("eV"),
         "md5": np.array(name)}
    return d
tr, va, te = (np.array(split_json[k]) for k in ("train", "valid", "test"))
n_train, n_valid = len(tr), len(va)
train, valid = ds(tr, "train"), ds(va, "valid")
best = None
gdml = GDMLTrain()  # sGDML allows one instance per process
for sig in (10, 20, 30, 40, 60):
    task = gdml.create_task(train, n_train, valid, n_valid, sig=sig, lam=1e-10, use_sym=True)
    t0 = time.time(); model = gdml.train(task); tt = time.time() - t0
    pred = GDMLPredict(model)
    e, f = pred.predict(R[va].reshape(len(va), -1))
    mae = 1000 * np.abs(f.reshape(F[va].shape) - F[va]).mean()
    print(f"sigma {sig}: valid force MAE {mae:.1f} meV/Å (train {tt:.0f} s)", flush=True)
    if best is None or mae < best[0]:
        best = (mae, sig, model)
_, sig, model = best
pred = GDMLPredict(model)
t0 = time.time(); e, f = pred.predict(R[te].reshape(len(te), -1)); dt = (time.time() - t0) / len(te)
f = f.reshape(F[te].shape)
t1 = time.time()
for k in range(20):
    pred.predict(R[te[k:k + 1]].reshape(1, -1))
single = (time.time() - t1) / 20
na = len(z)
print(f"sGDML split {sys.argv[2]}, n_train={n_train} sigma={sig}: test E MAE {1000*np.abs(e.ravel()-E[te]).mean()/na:.2f} meV/atom, "
      f"F MAE {1000*np.abs(f-F[te]).mean():.1f} meV/Å, F RMSE {1000*np.sqrt(((f-F[te])**2).mean()):.1f} meV/Å; "
      f"{1000*single:.1f} ms per single-structure prediction")

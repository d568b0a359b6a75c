"""examples/research/linear_ace.py (the linear ACE-style research fit of docs/benchmarks.md): its own checks of
rotation invariance and finite-difference forces pass, and a small basis fitted to 200 ethanol structures
predicts the forces of 50 others far better than the mean force (zero) does."""
import json
import re
import subprocess
import sys

from conftest import ROOT


def test_linear_ace_fits_and_checks_itself(tmp_path):
    data = ROOT / "examples" / "data" / "ethanol_300.extxyz"
    lines = data.read_text().splitlines(keepends=True)
    per = int(lines[0]) + 2
    (tmp_path / "test.extxyz").write_text("".join(lines[250 * per:300 * per]))
    (tmp_path / "split.json").write_text(json.dumps({"train": list(range(200)), "valid": list(range(200, 250))}))
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "research" / "linear_ace.py"), str(data),
                        str(tmp_path / "test.extxyz"), str(tmp_path / "split.json"), "--energy-key", "REF_energy",
                        "--forces-key", "REF_forces", "--deg", "8,6,4", "--lmax", "3", "--lams", "1e-8",
                        "--residuals", str(tmp_path / "res")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "self-check: invariance" in r.stdout
    test_f = float(re.search(r"test [\d.]+ / ([\d.]+)", r.stdout).group(1))
    # mean |F| of the test structures in meV/Å: the error of predicting zero forces
    forces = [abs(float(x)) for line in lines[250 * per:300 * per] if len(line.split()) == 7 for x in line.split()[4:7]]
    zero_error = 1000 * sum(forces) / len(forces)
    assert test_f < 0.5 * zero_error, (test_f, zero_error)
    # the residual files hold the reference minus the fit: their mean |F| is the reported test error
    res = (tmp_path / "res" / "test.extxyz").read_text().splitlines()
    residual = [abs(float(x)) for line in res if len(line.split()) == 7 for x in line.split()[4:7]]
    assert abs(1000 * sum(residual) / len(residual) - test_f) < 0.01 + 1e-3 * test_f

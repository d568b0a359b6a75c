"""Label the frames of an extended-XYZ file with GFN2-xTB (or GFN1-xTB) energies and forces computed by tblite.

Usage:  .venv/bin/pip install tblite        (not in scripts/requirements.txt by default)
        .venv/bin/python scripts/xtb_labels.py IN.extxyz OUT.extxyz [--first N] [--jobs J]
                [--method GFN2-xTB|GFN1-xTB] [--accuracy A] [--max-iterations K]
                [--charge Q] [--uhf U] [--energy-key energy] [--forces-key forces] [--skip-failed]
e.g.    .venv/bin/python scripts/xtb_labels.py /work/shared/data/rmd17/ethanol_train_01.extxyz /tmp/eth_xtb.extxyz \\
                --energy-key xtb_energy --forces-key xtb_forces --jobs 2

What it reads: ONLY the species and positions of each frame (plus the `Properties` and `pbc` keys of the comment
line, to locate those columns and to refuse periodic input). The input's energy, force or any other label is never
parsed, used or copied, so the script is safe to run on training files whose reference labels must stay unseen.
`Properties` must contain `species:S:1` and `pos:R:3`; other columns may be present anywhere and are skipped
(a missing `Properties` key means the ASE default `species:S:1:pos:R:3`). Species are element symbols.

What it writes: a new extended-XYZ file with, per frame, the same species and the same position text (copied
verbatim, so the geometry is bit-identical), `pbc="F F F"`, and only the xTB labels:
    Properties=species:S:1:pos:R:3:<forces-key>:R:3 <energy-key>=<E> pbc="F F F"
Units follow ASE conventions: energy in eV (total xTB energy, no reference-atom shift), forces in eV/Å.
tblite works in atomic units: positions are passed in Bohr, the energy comes back in Hartree and the gradient in
Hartree/Bohr; forces = -gradient. Conversion uses CODATA 2018 (the constants of tblite/mctc-lib):
1 Bohr = 0.529177210903 Å, 1 Hartree = 27.211386245988 eV. Every frame gets the same total charge (--charge, in
elementary charges, default 0) and number of unpaired electrons (--uhf, default 0: closed shell), xtb's --chrg and
--uhf; electronic temperature 300 K (tblite's default).

Failures: a frame whose SCF does not converge within --max-iterations (or any other tblite error) stops the run
with an error naming its 0-based frame index; with --skip-failed such frames are dropped from OUT instead and
their number (and indices) are printed.

Cache: next to OUT the script writes OUT.json recording the sha256 of the species+positions text of the requested
frames, the number of frames, method, keys, accuracy, max-iterations, --skip-failed, the tblite version and the
sha256 of OUT itself. If OUT and OUT.json exist and all of these match, OUT is reused without recomputation (the
script prints "cached"). Both files are written atomically (temporary file in the same folder + rename).

Threads: the molecules here are tiny, and OpenMP threading inside tblite makes them much slower, so the script
sets OMP_NUM_THREADS=1 unless it is already set; use --jobs for parallelism (one process per job).

Dependencies: numpy and tblite only (no ASE).
"""
import argparse
import hashlib
import json
import math
import multiprocessing as mp
import os
import re
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # must happen before tblite (and its OpenMP runtime) is loaded

import numpy as np

BOHR = 0.529177210903  # Å per Bohr, CODATA 2018
HARTREE = 27.211386245988  # eV per Hartree, CODATA 2018
METHODS = ("GFN2-xTB", "GFN1-xTB")
DEFAULT_PROPERTIES = "species:S:1:pos:R:3"
SYMBOLS = (
    "X H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
    "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb "
    "Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn"
).split()  # xTB is parametrised up to Z = 86
Z_OF = {s: z for z, s in enumerate(SYMBOLS) if z > 0}
# one key[=value] item of an extended-XYZ comment line; values may be "quoted" or {braced}
_KV = re.compile(r'\s*([^\s="{}]+)(?:\s*=\s*("(?:[^"\\]|\\.)*"|\{[^}]*\}|[^\s"]+))?')


class InputError(Exception):
    pass


def _comment_keys(line, where):
    """key -> raw value string for the comment line (values are not interpreted; only Properties/pbc are used)."""
    out, pos, line = {}, 0, line.rstrip("\n")
    while pos < len(line):
        if not line[pos:].strip():
            break
        m = _KV.match(line, pos)
        if not m or m.end() == pos:
            raise InputError(f"{where}: cannot parse comment line near {line[pos:pos + 30]!r}")
        val = m.group(2)
        if val is not None and val[:1] in "\"{":
            val = val[1:-1]
        out[m.group(1)] = val
        pos = m.end()
    return out


def _columns(props, where):
    """(species column, first pos column, total number of columns) from a Properties string."""
    f = props.split(":")
    if len(f) % 3:
        raise InputError(f"{where}: malformed Properties={props!r}")
    col, cols = 0, {}
    for name, typ, n in zip(f[0::3], f[1::3], f[2::3]):
        try:
            n = int(n)
        except ValueError:
            raise InputError(f"{where}: malformed Properties={props!r}") from None
        cols[name] = (col, typ.upper(), n)
        col += n
    sp, pos = cols.get("species"), cols.get("pos")
    if sp is None or pos is None or sp[1:] != ("S", 1) or pos[1:] != ("R", 3):
        raise InputError(f"{where}: Properties={props!r} must contain species:S:1 and pos:R:3")
    return sp[0], pos[0], col


def read_geometries(path, first=None):
    """Frames of an extended-XYZ file as (symbols, position tokens [n][3] as text), plus the sha256 of that text.

    Only the species and pos columns are extracted; every other column and every other comment key is ignored."""
    frames, h = [], hashlib.sha256()
    with open(path) as fh:
        lineno = 0
        while first is None or len(frames) < first:
            head = fh.readline()
            lineno += 1
            if not head:
                break
            if not head.strip():
                continue  # tolerate blank lines between frames / at the end
            where = f"{path}:{lineno} (frame {len(frames)})"
            try:
                n = int(head.split()[0])
            except ValueError:
                raise InputError(f"{where}: expected the number of atoms, got {head.strip()[:40]!r}") from None
            comment = fh.readline()
            lineno += 1
            keys = _comment_keys(comment, where)
            props = next((v for k, v in keys.items() if k.lower() == "properties"), DEFAULT_PROPERTIES)
            pbc = next((v for k, v in keys.items() if k.lower() == "pbc"), None)
            if pbc is not None and any(t.upper() in ("T", "TRUE", "1") for t in pbc.split()):
                raise InputError(f"{where}: periodic frame (pbc={pbc!r}); only molecules are supported")
            isp, ipos, ncol = _columns(props, where)
            syms, pos = [], []
            for _ in range(n):
                row = fh.readline()
                lineno += 1
                tok = row.split()
                if len(tok) != ncol:
                    raise InputError(f"{path}:{lineno} (frame {len(frames)}): expected {ncol} columns "
                                     f"(Properties={props}), got {len(tok)}")
                if tok[isp] not in Z_OF:
                    raise InputError(f"{path}:{lineno}: unknown or unsupported element {tok[isp]!r}")
                syms.append(tok[isp])
                pos.append(tok[ipos:ipos + 3])
            h.update(f"{n}\n".encode())
            for s, p in zip(syms, pos):
                h.update(f"{s} {p[0]} {p[1]} {p[2]}\n".encode())
            frames.append((syms, pos))
    return frames, h.hexdigest()


def _xtb_frame(task):
    """Worker: (index, Z, positions Å, method, accuracy, max_iter, charge, uhf) -> (index, E eV, F eV/Å or None, error
    or None)."""
    from tblite.interface import Calculator  # imported here: OMP_NUM_THREADS is already set in this process

    i, numbers, pos_ang, method, accuracy, max_iter, charge, uhf = task
    try:
        calc = Calculator(method, numbers, pos_ang / BOHR, charge=float(charge), uhf=int(uhf))
        calc.set("verbosity", 0)
        calc.set("accuracy", accuracy)
        calc.set("max-iter", max_iter)
        res = calc.singlepoint()
        e = float(res.get("energy")) * HARTREE
        f = -np.asarray(res.get("gradient"), dtype=float) * (HARTREE / BOHR)
    except Exception as exc:  # tblite reports SCF non-convergence as TBLiteRuntimeError
        return i, None, None, f"{type(exc).__name__}: {exc}"
    if not (math.isfinite(e) and np.isfinite(f).all()):
        return i, None, None, "non-finite energy or forces"
    return i, e, f, None


def compute(frames, method, accuracy, max_iter, jobs, charge=0, uhf=0):
    """Yield (index, energy eV, forces eV/Å, error) for every frame, in order."""
    tasks = ((i, np.array([Z_OF[s] for s in syms]), np.array(pos, dtype=float), method, accuracy, max_iter, charge, uhf)
             for i, (syms, pos) in enumerate(frames))
    if jobs <= 1:
        yield from map(_xtb_frame, tasks)
        return
    # spawn: fresh interpreters, so each worker loads tblite/OpenMP itself with OMP_NUM_THREADS from the environment
    with mp.get_context("spawn").Pool(jobs) as pool:
        yield from pool.imap(_xtb_frame, tasks, chunksize=max(1, min(32, len(frames) // (4 * jobs))))


def _atomic_write(path, text):
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp_" + os.path.basename(path) + ".", dir=d)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _unpaired(text):
    u = int(text)
    if u < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {u}")
    return u


def add_charge_arguments(ap):
    """--charge and --uhf (xtb's --chrg and --uhf): the same for every frame."""
    ap.add_argument("--charge", type=int, default=0, help="total charge of every frame, elementary charges (default 0)")
    ap.add_argument("--uhf", type=_unpaired, default=0, metavar="U",
                    help="unpaired electrons of every frame (default 0: closed shell; 1 for a doublet radical)")


def electron_parity_error(symbols, charge, uhf):
    """A message when the frame's electron count (Z − charge) and the unpaired electrons have different parity
    (xTB counts valence electrons, whose parity is Z's): tblite would silently smear the occupations instead."""
    electrons = sum(Z_OF[s] for s in symbols) - charge
    if (electrons - uhf) % 2:
        return (f"{electrons} electrons (charge {charge}) cannot have {uhf} unpaired; "
                f"set --charge or --uhf (a doublet radical has --uhf 1)")
    return None


def _check_key(name, value, prog="xtb_labels"):
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", value) or value in ("species", "pos", "Properties", "pbc"):
        raise SystemExit(f"{prog}: invalid {name} {value!r} (letters, digits, _ . -; not a reserved name)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="See the module docstring (top of this file) for details.")
    ap.add_argument("input", help="extended-XYZ file; only its species and positions are read")
    ap.add_argument("output", help="extended-XYZ file to write (with sidecar OUTPUT.json for the cache)")
    ap.add_argument("--first", type=int, metavar="N", help="only the first N frames")
    ap.add_argument("--jobs", type=int, default=1, metavar="J", help="worker processes (default 1)")
    ap.add_argument("--method", default="GFN2-xTB", choices=METHODS, help="xTB Hamiltonian (default GFN2-xTB)")
    ap.add_argument("--accuracy", type=float, default=1.0,
                    help="tblite numerical accuracy; smaller is tighter (default 1.0)")
    ap.add_argument("--max-iterations", type=int, default=250, metavar="K", help="max SCF iterations (default 250)")
    add_charge_arguments(ap)
    ap.add_argument("--energy-key", default="energy", help="comment-line key of the energy (default energy)")
    ap.add_argument("--forces-key", default="forces", help="Properties name of the forces (default forces)")
    ap.add_argument("--skip-failed", action="store_true",
                    help="drop frames whose SCF fails to converge instead of stopping with an error")
    a = ap.parse_args(argv)
    _check_key("--energy-key", a.energy_key)
    _check_key("--forces-key", a.forces_key)
    if a.energy_key == a.forces_key:
        raise SystemExit("xtb_labels: --energy-key and --forces-key must differ")
    if a.first is not None and a.first < 1 or a.jobs < 1 or a.max_iterations < 1 or not a.accuracy > 0:
        raise SystemExit("xtb_labels: --first, --jobs, --max-iterations and --accuracy must be positive")
    if os.path.abspath(a.input) == os.path.abspath(a.output):
        raise SystemExit("xtb_labels: output must differ from input")

    try:
        from importlib.metadata import version
        tblite_version = version("tblite")
    except Exception:
        raise SystemExit("xtb_labels: the tblite package is not installed (pip install tblite)") from None

    try:
        frames, geom_sha = read_geometries(a.input, a.first)
    except (InputError, OSError) as exc:
        raise SystemExit(f"xtb_labels: {exc}") from None
    if not frames:
        raise SystemExit(f"xtb_labels: no frames in {a.input}")
    for i, (syms, _) in enumerate(frames):
        why = electron_parity_error(syms, a.charge, a.uhf)
        if why:
            raise SystemExit(f"xtb_labels: frame {i} (0-based) of {a.input}: {why}")
    if a.first is not None and len(frames) < a.first:
        print(f"xtb_labels: note: {a.input} has only {len(frames)} frames (< --first {a.first})", file=sys.stderr)

    meta = {"input_geometry_sha256": geom_sha, "frames_requested": len(frames), "method": a.method,
            "energy_key": a.energy_key, "forces_key": a.forces_key, "accuracy": a.accuracy,
            "max_iterations": a.max_iterations, "skip_failed": a.skip_failed, "tblite_version": tblite_version,
            "charge": a.charge, "uhf": a.uhf}
    sidecar = a.output + ".json"
    if os.path.exists(a.output) and os.path.exists(sidecar):
        try:
            with open(sidecar) as fh:
                old = json.load(fh)
            if all(old.get(k) == v for k, v in meta.items()) and old.get("output_sha256") == _sha256_file(a.output):
                print(f"xtb_labels: cached {a.output} ({old.get('frames_written')} frames, {a.method}; "
                      f"geometry sha256 {geom_sha[:12]})")
                return 0
        except (OSError, ValueError):
            pass  # unreadable sidecar: recompute

    t0 = time.perf_counter()
    out, failed = [], []
    props = f"species:S:1:pos:R:3:{a.forces_key}:R:3"
    for i, e, f, err in compute(frames, a.method, a.accuracy, a.max_iterations, a.jobs, a.charge, a.uhf):
        if err is not None:
            if not a.skip_failed:
                raise SystemExit(f"xtb_labels: frame {i} (0-based) of {a.input} failed: {err} "
                                 f"(use --skip-failed to drop such frames, or raise --max-iterations)")
            failed.append(i)
            continue
        syms, pos = frames[i]
        out.append(f'{len(syms)}\nProperties={props} {a.energy_key}={e:.10f} pbc="F F F"\n')
        for s, p, fi in zip(syms, pos, f):
            out.append(f"{s:2s} {p[0]:>16s} {p[1]:>16s} {p[2]:>16s} "
                       f"{fi[0]:16.10f} {fi[1]:16.10f} {fi[2]:16.10f}\n")
    dt = time.perf_counter() - t0
    n_ok = len(frames) - len(failed)
    if n_ok == 0:
        raise SystemExit("xtb_labels: every frame failed; nothing written")
    if failed:
        shown = ", ".join(map(str, failed[:20])) + (", ..." if len(failed) > 20 else "")
        print(f"xtb_labels: skipped {len(failed)} frame(s) whose calculation failed (0-based: {shown})")

    if os.path.exists(sidecar):
        os.unlink(sidecar)  # never leave a sidecar that could vouch for a half-replaced output
    _atomic_write(a.output, "".join(out))
    meta.update(frames_written=n_ok, frames_skipped=failed, output_sha256=_sha256_file(a.output),
                input=os.path.abspath(a.input), seconds=round(dt, 3))
    _atomic_write(sidecar, json.dumps(meta, indent=1) + "\n")
    print(f"xtb_labels: {n_ok} frames ({a.method}, tblite {tblite_version}, jobs {a.jobs}) -> {a.output} "
          f"in {dt:.2f} s, {dt / len(frames):.4f} s/frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())

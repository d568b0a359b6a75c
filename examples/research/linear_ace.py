"""Research tool: a linear ACE-style model fitted by least squares on a molecule of the rMD17 form.

The question behind it (issue 12, docs/benchmarks.md "A linear ACE basis, prototyped"): how far does a *linear*
model get when its basis is ACE's (polynomial radial functions in a transformed distance, real spherical
harmonics, products of up to four density coefficients truncated by total degree) rather than pilip's Gaussian
channels, on which linear fits stop at 41-46 meV/Å (ethanol N = 950)? Written in numpy to measure, not to ship:
features of 2000 ethanol frames take ~3 min here, a Rust version would take seconds.

Basis, for centre i of element z_i and neighbour j of element z_j at r_ij = r û:

    R_n(r)        = P_n(s(r)) (1 - r/r_c)^2,   s = 2 (x(r) - x(r_c)) / (x(r_in) - x(r_c)) - 1,  x(r) = ((1+r_0)/(1+r))^2
    A_i[z,n,l,m]  = sum_{j: z_j = z} R_n(r_ij) Y_lm(û_ij)                 (P_n Legendre, Y_lm real, Racah-normalised)
    B_i           = products of 1..4 factors A[v_1]..A[v_k], v = (z, n, l), sorted, with sum_k (n_k + w_l l_k) <= D_k,
                    contracted to invariants by Gaunt coefficients (order 2: l_1 = l_2; order 3: the real Gaunt
                    tensor of (l_1, l_2, l_3), even sum; order 4: two Gaunt tensors through an intermediate L)
    E             = sum_i c_{z_i} . B_i + E_0,   F = -dE/dr

The Gaunt coefficients are integrals of products of the same harmonics, computed by Gauss quadrature, so the
invariants are exact whatever the normalisation. Invariance (a rotation) and the forces (central differences)
are checked at start-up. The fit: rows = energies (x energy_weight / atoms) and force components, columns
standardised, ridge lambda x mean diagonal x a smoothness prior (1 + sum_k n_k^p + (l_k (l_k+1) / 2)^p), solved
through the normal equations (ridges below ~1e-12 are below their rounding: `--lsqr` solves on the rows).

    python3 examples/research/linear_ace.py TRAIN.extxyz TEST.extxyz RUN/split.json \
        [--deg 14,10,8,6] [--r0 1.2] [--rin 0.7] [--rc 5.0] [--lams 1e-12,1e-11] [--prior 2] [--max-order H:2] \
        [--lsqr 1e-12] [--energy-key energy --forces-key forces] [--residuals DIR]   (--help lists them all)

`split.json` is the split of a `pilip train` run on TRAIN (its `train` indices are fitted, `valid` reported).
With `--residuals DIR` it writes DIR/train.extxyz (train then valid structures) and DIR/test.extxyz with the
linear model's predictions subtracted, for `pilip train ... --set data.split="contiguous"`. Needs numpy (and
scipy for `--lsqr`). Every frame must have the species order of the first (true of rMD17 files).
"""
import argparse
import itertools
import json
import os
import re
import sys
import time

import numpy as np


def options():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("train")
    p.add_argument("test")
    p.add_argument("split")
    p.add_argument("--energy-key", default="energy")
    p.add_argument("--forces-key", default="forces")
    p.add_argument("--rc", type=float, default=5.0, help="cutoff, Å")
    p.add_argument("--r0", type=float, default=1.2, help="centre of the distance transform, Å")
    p.add_argument("--rin", type=float, default=0.7, help="inner end of the polynomials' domain, Å (below the shortest distance)")
    p.add_argument("--deg", default="14,10,8,6", help="largest total degree per correlation order 1,2[,3[,4]]")
    p.add_argument("--wl", type=float, default=1.5, help="degree of one unit of l")
    p.add_argument("--lmax", type=int, default=4)
    p.add_argument("--max-order", default="", help="lower correlation orders for some centre elements, e.g. H:2")
    p.add_argument("--energy-weight", type=float, default=20.0)
    p.add_argument("--prior", default="2", help="power p of the smoothness prior (a list scans them)")
    p.add_argument("--raw-prior", action="store_true",
                   help="apply the prior to the coefficients of the unscaled basis (as ACE does), not the standardised one")
    p.add_argument("--lams", default="1e-12,1e-11,1e-10", help="ridge values to report (relative)")
    p.add_argument("--ntest", type=int, default=0, help="test on the first N test frames only (0: all)")
    p.add_argument("--lsqr", type=float, default=0.0,
                   help="solve with LSQR on the rows themselves, preconditioned by the normal equations at this ridge "
                        "(reaches ridges below their rounding; 0: normal equations only)")
    p.add_argument("--count", action="store_true", help="print the basis size and stop")
    p.add_argument("--residuals", default="", help="write residual extxyz files of the first prior and ridge here")
    return p.parse_args()


def read_extxyz(path, energy_key="energy", forces_key="forces"):
    """[(species, positions [N,3], forces [N,3], energy)] of an extended-XYZ file (labels under the given keys)."""
    frames = []
    with open(path) as f:
        while True:
            line = f.readline()
            if not line.strip():
                break
            n = int(line)
            head = f.readline()
            info = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', head))
            if energy_key not in info or "Properties" not in info:
                sys.exit(f"{path}, frame {len(frames)}: no '{energy_key}=' or Properties= in the comment line")
            fields, col = info["Properties"].split(":"), 0
            cols = {}
            for k in range(0, len(fields) - 2, 3):
                cols[fields[k]] = col
                col += int(fields[k + 2])
            if forces_key not in cols or "pos" not in cols:
                sys.exit(f"{path}, frame {len(frames)}: Properties has no '{forces_key}' or 'pos'")
            rows = [f.readline().split() for _ in range(n)]
            p, q = cols["pos"], cols[forces_key]
            frames.append(([w[0] for w in rows], np.array([[float(x) for x in w[p:p + 3]] for w in rows]),
                           np.array([[float(x) for x in w[q:q + 3]] for w in rows]), float(info[energy_key])))
    return frames


def solid_harmonics(u, lmax):
    """Real solid harmonics (Racah-normalised) of the rows of u [P,3] and their gradients: S [P,K], dS/du [P,3,K],
    K = (lmax+1)^2, in the order (l, m = -l..l). Forward-mode: every quantity carries (value, d/dx, d/dy, d/dz)."""
    P = u.shape[0]
    x, y, z, r2 = (np.zeros((4, P)) for _ in range(4))
    x[0], y[0], z[0] = u.T
    x[1] = y[2] = z[3] = 1.0
    r2[0] = (u ** 2).sum(1)
    r2[1:] = 2 * u.T

    def mul(a, b):
        out = np.empty_like(a)
        out[0] = a[0] * b[0]
        out[1:] = a[1:] * b[0] + a[0] * b[1:]
        return out

    S = {(0, 0): np.zeros((4, P))}
    S[(0, 0)][0] = 1.0
    for l in range(lmax):
        c = np.sqrt((2.0 if l == 0 else 1.0) * (2 * l + 1) / (2 * l + 2))
        if l == 0:
            S[(1, 1)], S[(1, -1)] = c * x, c * y
        else:
            S[(l + 1, l + 1)] = c * (mul(x, S[(l, l)]) - mul(y, S[(l, -l)]))
            S[(l + 1, -l - 1)] = c * (mul(y, S[(l, l)]) + mul(x, S[(l, -l)]))
        for m in range(-l, l + 1):
            t = (2 * l + 1) * mul(z, S[(l, m)])
            if abs(m) <= l - 1:
                t = t - np.sqrt((l + m) * (l - m)) * mul(r2, S[(l - 1, m)])
            S[(l + 1, m)] = t / np.sqrt((l + m + 1) * (l - m + 1))
    out = np.stack([S[(l, m)] for l in range(lmax + 1) for m in range(-l, l + 1)], -1)
    return out[0], np.transpose(out[1:], (1, 0, 2))


def lblock(l):
    return slice(l * l, (l + 1) ** 2)


class Basis:
    """The one-particle functions, the product basis and its evaluation with forces."""

    def __init__(self, o, species):
        self.o = o
        self.deg = [float(x) for x in o.deg.split(",")]
        self.elems = sorted(set(species))
        self.z = np.array([self.elems.index(s) for s in species])
        self.n_atoms, self.ne = len(species), len(self.elems)
        self.nmax = int(max(self.deg)) + 1
        self.lmax = o.lmax
        # Gauss quadrature on the sphere, exact for the products of three harmonics of degree <= lmax + lmax + lmax
        xg, wg = np.polynomial.legendre.leggauss(2 * self.lmax + 4)
        nph = 4 * self.lmax + 6
        ct, ph = np.meshgrid(xg, 2 * np.pi * np.arange(nph) / nph, indexing="ij")
        st = np.sqrt(1 - ct ** 2)
        self.yq, _ = solid_harmonics(np.stack([st * np.cos(ph), st * np.sin(ph), ct], -1).reshape(-1, 3), self.lmax)
        self.wq = np.repeat(wg * 2 * np.pi / nph, nph)
        one = [(z, n, l) for z in range(self.ne) for l in range(self.lmax + 1) for n in range(self.nmax)
               if n + o.wl * l <= max(self.deg)]
        self.basis = []   # (tuple of v = (z, n, l), coupling tensor over the m's)
        for nu, dmax in enumerate(self.deg, start=1):
            cand = [v for v in one if self.degree(v) <= dmax]
            for tup in itertools.combinations_with_replacement(cand, nu):
                if sum(self.degree(v) for v in tup) <= dmax:
                    self.basis += [(tup, c) for c in self.couplings([v[2] for v in tup])]
        groups = {}
        for b, (tup, c) in enumerate(self.basis):
            groups.setdefault((tuple(v[2] for v in tup), c.tobytes()), (c, []))[1].append(b)
        self.groups = [(c, np.array(bs)) for c, bs in groups.values()]
        self.nb = len(self.basis)
        self.pairs = np.array([(i, j) for i in range(self.n_atoms) for j in range(self.n_atoms) if i != j])

    def degree(self, v):
        return v[1] + self.o.wl * v[2]

    def gaunt(self, l1, l2, l3):
        g = self.yq
        return np.einsum("q,qa,qb,qc->abc", self.wq, g[:, lblock(l1)], g[:, lblock(l2)], g[:, lblock(l3)])

    def couplings(self, ls):
        """The invariant contractions of a product of densities of orders ls (empty if there is none)."""
        if len(ls) == 1:
            return [np.ones(1)] if ls[0] == 0 else []
        if len(ls) == 2:
            return [np.eye(2 * ls[0] + 1)] if ls[0] == ls[1] else []
        if len(ls) == 3:
            l1, l2, l3 = ls
            return [self.gaunt(l1, l2, l3)] if (l1 + l2 + l3) % 2 == 0 and abs(l1 - l2) <= l3 <= l1 + l2 else []
        l1, l2, l3, l4 = ls
        out = []
        for L in range(max(abs(l1 - l2), abs(l3 - l4)), min(l1 + l2, l3 + l4, self.lmax) + 1):
            if (l1 + l2 + L) % 2 == 0 and (l3 + l4 + L) % 2 == 0:
                out.append(np.einsum("abM,cdM->abcd", self.gaunt(l1, l2, L), self.gaunt(l3, l4, L)))
        return out

    def sizes(self):
        return [sum(1 for t, _ in self.basis if len(t) == nu) for nu in range(1, len(self.deg) + 1)]

    def radial(self, r):
        o, nmax = self.o, self.nmax
        x = ((1 + o.r0) / (1 + r)) ** 2
        dx = -2 * (1 + o.r0) ** 2 / (1 + r) ** 3
        xc, xi = ((1 + o.r0) / (1 + o.rc)) ** 2, ((1 + o.r0) / (1 + o.rin)) ** 2
        s, ds = 2 * (x - xc) / (xi - xc) - 1, 2 * dx / (xi - xc)
        P, dP = np.zeros((nmax,) + r.shape), np.zeros((nmax,) + r.shape)
        P[0] = 1
        if nmax > 1:
            P[1], dP[1] = s, 1
        for n in range(1, nmax - 1):
            P[n + 1] = ((2 * n + 1) * s * P[n] - n * P[n - 1]) / (n + 1)
            dP[n + 1] = dP[n - 1] + (2 * n + 1) * P[n]
        inside = r < o.rc
        env = np.where(inside, (1 - r / o.rc) ** 2, 0.0)
        denv = np.where(inside, -2 * (1 - r / o.rc) / o.rc, 0.0)
        return np.moveaxis(P * env, 0, -1), np.moveaxis(dP * ds * env + P * denv, 0, -1)

    def features(self, positions):
        """Energy features [S, ne*nb] and force features [S, N, 3, ne*nb] (forces = features @ coefficients)."""
        S, N, nmax = len(positions), self.n_atoms, self.nmax
        pi, pj = self.pairs[:, 0], self.pairs[:, 1]
        rv = positions[:, pj] - positions[:, pi]
        r = np.linalg.norm(rv, axis=-1)
        u = rv / r[..., None]
        Y, dYu = solid_harmonics(u.reshape(-1, 3), self.lmax)
        Y, dYu = Y.reshape(S, len(pi), -1), dYu.reshape(S, len(pi), 3, -1)
        dY = (dYu - u[..., :, None] * np.einsum("spx,spxk->spk", u, dYu)[:, :, None, :]) / r[..., None, None]
        R, dR = self.radial(r)
        phi = R[..., :, None] * Y[..., None, :]
        dphi = dR[..., None, :, None] * u[..., :, None, None] * Y[..., None, None, :] + R[..., None, :, None] * dY[..., :, None, :]
        A = np.zeros((S, N, self.ne * nmax, Y.shape[-1]))
        dA = np.zeros((S, N, N, 3, self.ne * nmax, Y.shape[-1]))   # dA[s, i, k, x, t, lm] = dA_i / dr_kx
        for p, (i, j) in enumerate(self.pairs):
            t = slice(self.z[j] * nmax, (self.z[j] + 1) * nmax)
            A[:, i, t] += phi[:, p]
            dA[:, i, j, :, t] += dphi[:, p]
            dA[:, i, i, :, t] -= dphi[:, p]
        E, F = np.zeros((S, self.ne, self.nb)), np.zeros((S, N, 3, self.ne, self.nb))
        letters = "abcd"
        for c, bs in self.groups:
            tups = [self.basis[b][0] for b in bs]
            nu = len(tups[0])
            factors = []
            for f in range(nu):
                t = np.array([tp[f][0] * nmax + tp[f][1] for tp in tups])
                lb = lblock(tups[0][f][2])
                factors.append((A[..., lb][:, :, t], dA[..., lb][:, :, :, :, t]))
            for f in range(nu):
                others = [g for g in range(nu) if g != f]
                if nu == 1:
                    partial = np.ones_like(factors[0][0])
                else:   # dB/dA_f: the coupling contracted with the other factors
                    expr = letters[:nu] + "," + ",".join("siK" + letters[g] for g in others) + "->siK" + letters[f]
                    partial = np.einsum(expr, c, *[factors[g][0] for g in others], optimize=True)
                if f == 0:
                    value = np.einsum("siKa,siKa->siK", factors[0][0], partial)
                grad = np.einsum("sikxKa,siKa->sikxK", factors[f][1], partial)
                for z in range(self.ne):
                    centre = self.z == z
                    if f == 0:
                        E[:, z, bs] += value[:, centre].sum(1)
                    F[:, :, :, z, bs] -= grad[:, centre].sum(1)
        return E.reshape(S, -1), F.reshape(S, N, 3, -1)

    def design(self, frames, chunk=25):
        parts = [self.features(np.stack([f[1] for f in frames[c:c + chunk]])) for c in range(0, len(frames), chunk)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def self_check(basis, frame):
    """Rotation invariance of the energy features and central differences of the force features."""
    a, b = 0.7, 0.3
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ \
        np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    pos = frame[1]
    e1, f1 = basis.features(pos[None])
    e2, f2 = basis.features((pos @ rot.T)[None])
    inv = np.abs(e1 - e2).max() / np.abs(e1).max()
    eqv = np.abs(np.einsum("xy,nyb->nxb", rot, f1[0]) - f2[0]).max() / np.abs(f1).max()
    h, k = 1e-5, 1
    plus, minus = pos.copy(), pos.copy()
    plus[k, 1] += h
    minus[k, 1] -= h
    fd = -(basis.features(plus[None])[0] - basis.features(minus[None])[0])[0] / (2 * h)
    err = np.abs(fd - f1[0, k, 1]).max() / np.abs(f1[0, k, 1]).max()
    print(f"self-check: invariance {inv:.1e}, force equivariance {eqv:.1e}, finite differences {err:.1e}")
    if max(inv, eqv) > 1e-10 or err > 1e-6:
        sys.exit("self-check failed")


def gram(X, block=6000):
    """X^T X in column blocks (one OpenBLAS build here crashed on a single product beyond ~2^32 bytes)."""
    n = X.shape[1]
    G = np.empty((n, n))
    for a in range(0, n, block):
        for c in range(0, n, block):
            G[a:a + block, c:c + block] = X[:, a:a + block].T @ X[:, c:c + block]
    return G


def main():
    o = options()
    train_all = read_extxyz(o.train, o.energy_key, o.forces_key)
    test = read_extxyz(o.test, o.energy_key, o.forces_key)
    if o.ntest:
        test = test[:o.ntest]
    with open(o.split) as f:
        split = json.load(f)
    tr, va = [train_all[i] for i in split["train"]], [train_all[i] for i in split["valid"]]
    species = train_all[0][0]
    bad = [k for k, f in enumerate(train_all + test) if f[0] != species]
    if bad:
        sys.exit(f"frame {bad[0]} has another species order than the first; this tool needs one molecule")
    basis = Basis(o, species)
    print(f"basis per centre element {basis.nb} (orders 1..: {basis.sizes()}), unknowns {basis.nb * basis.ne}", flush=True)
    keep = np.ones(basis.ne * basis.nb, bool)
    for item in filter(None, o.max_order.split(",")):
        el, order = item.split(":")
        if el in basis.elems:
            z = basis.elems.index(el)
            keep[z * basis.nb:(z + 1) * basis.nb] = [len(t) <= int(order) for t, _ in basis.basis]
    if not keep.all():
        print(f"unknowns kept (--max-order): {keep.sum()}", flush=True)
    if o.count:
        return
    self_check(basis, tr[0])
    t0 = time.time()
    (Etr, Ftr), (Eva, Fva), (Ete, Fte) = basis.design(tr), basis.design(va), basis.design(test)
    print(f"features {time.time() - t0:.0f} s", flush=True)
    if not keep.all():
        Etr, Ftr, Eva, Fva, Ete, Fte = (a[..., keep] for a in (Etr, Ftr, Eva, Fva, Ete, Fte))

    n, ntr = basis.n_atoms, len(tr)
    e_scale = o.energy_weight / n
    ye = np.array([f[3] for f in tr])
    e0, emean = ye.mean(), Etr.mean(0)
    Xe = (Etr - emean) * e_scale
    Ff = Ftr.reshape(ntr, -1, Ftr.shape[-1])
    yf = np.stack([f[2] for f in tr]).reshape(ntr, -1)
    col = np.sqrt(((Xe ** 2).sum(0) + sum((Ff[c:c + 50] ** 2).sum((0, 1)) for c in range(0, ntr, 50)))
                  / (ntr * (1 + Ff.shape[1]))) + 1e-12
    t0 = time.time()
    XtX, Xty = gram(Xe / col), (Xe / col).T @ ((ye - e0) * e_scale)
    for c in range(0, ntr, 50):
        Xs = Ff[c:c + 50].reshape(-1, Ff.shape[-1]) / col
        XtX += gram(Xs)
        Xty += Xs.T @ yf[c:c + 50].reshape(-1)
    print(f"normal equations {time.time() - t0:.0f} s", flush=True)

    def prior_of(p):
        smooth = np.tile([1 + sum(v[1] ** p + (v[2] * (v[2] + 1) / 2) ** p for v in tup) for tup, _ in basis.basis], basis.ne)[keep]
        if o.raw_prior:   # |D w|^2 on the raw coefficients w = c / col of the standardised c
            smooth = smooth / col ** 2
            return np.diag(XtX).mean() * smooth / np.median(smooth)
        return np.diag(XtX).mean() * smooth / smooth.mean()

    priors = [float(x) for x in o.prior.split(",")]
    if o.lsqr:
        import scipy.linalg as sl
        import scipy.sparse.linalg as ssl
        chol = sl.cholesky(XtX + o.lsqr * np.diag(prior_of(priors[0])), lower=True)
        X = np.concatenate([Xe, Ftr.reshape(-1, Ftr.shape[-1])]) / col
        y = np.concatenate([(ye - e0) * e_scale, yf.reshape(-1)])

    def fit(lam, prior):
        if not o.lsqr:
            return np.linalg.solve(XtX + lam * np.diag(prior), Xty) / col
        # min |X w - y|^2 + lam |D w|^2 with w = L^-T z: nearly orthonormal columns when lam is near o.lsqr
        d = np.sqrt(lam * prior)
        up = lambda z: sl.solve_triangular(chol, z, lower=True, trans="T")
        op = ssl.LinearOperator((X.shape[0] + X.shape[1], X.shape[1]), dtype=float,
                                matvec=lambda z: np.concatenate([X @ up(z), d * up(z)]),
                                rmatvec=lambda v: sl.solve_triangular(chol, X.T @ v[:X.shape[0]] + d * v[X.shape[0]:], lower=True))
        t0 = time.time()
        out = ssl.lsqr(op, np.concatenate([y, np.zeros(X.shape[1])]), atol=1e-10, btol=1e-10, iter_lim=400)
        print(f"  lsqr: {out[2]} iterations, {time.time() - t0:.0f} s", flush=True)
        return up(out[0]) / col

    def predict(w, E, F):
        return (E - emean) @ w + e0, F @ w

    def mae(w, frames, E, F):
        pe, pf = predict(w, E, F)
        return (1000 * np.abs(pe - [f[3] for f in frames]).mean(), 1000 * np.abs(pf - np.stack([f[2] for f in frames])).mean())

    lams = [float(x) for x in o.lams.split(",")]
    first = None   # the fit of the first prior and ridge, for --residuals
    for p in priors:
        prior = prior_of(p)
        for lam in lams:
            w = fit(lam, prior)
            first = w if first is None else first
            print("prior p = %g, ridge %g: E / F MAE (meV, meV/Å) train %.2f / %.2f, valid %.2f / %.2f, test %.2f / %.2f"
                  % ((p, lam) + mae(w, tr, Etr, Ftr) + mae(w, va, Eva, Fva) + mae(w, test, Ete, Fte)), flush=True)
    if o.residuals:
        w = first
        os.makedirs(o.residuals, exist_ok=True)
        for name, frames, E, F in [("train", tr + va, np.concatenate([Etr, Eva]), np.concatenate([Ftr, Fva])),
                                   ("test", test, Ete, Fte)]:
            pe, pf = predict(w, E, F)
            with open(os.path.join(o.residuals, name + ".extxyz"), "w") as f:
                for k, (sp, pos, frc, e) in enumerate(frames):
                    f.write(f'{n}\nProperties=species:S:1:pos:R:3:forces:R:3 energy={e - pe[k]:.10f} pbc="F F F"\n')
                    for a in range(n):
                        g = frc[a] - pf[k, a]
                        f.write("%s %.10f %.10f %.10f %.10f %.10f %.10f\n" % (sp[a], *pos[a], *g))
        print(f"residuals of prior p = {priors[0]:g}, ridge {lams[0]:g} written to {o.residuals}/{{train,test}}.extxyz")


if __name__ == "__main__":
    main()

//! Dense linear algebra on row-major slices (matrixmultiply's blocked sgemm/dgemm underneath, a symmetric
//! eigensolver) and the instruction set the hand-written kernels are compiled for.
//!
//! Measured: for the network's shapes (≤ 21 atoms × 1500 features × 64) matrixmultiply, packing included, beat
//! hand-written AVX2 row-axpy and dot kernels in f64 (9 vs 6 GFLOP/s). In f32 on CPUs with AVX-512 the two
//! products of a training step that read or write a layer's weights row by row ([`Real::acc_product`],
//! [`Real::acc_product_tn`], widths that are multiples of 64) have kernels of their own, without packing:
//! matrixmultiply packed the whole `[inputs][64]` first layer for every task of 32 atoms (uracil: 2–4 % less time
//! per epoch, toluene 2–5 %). The input-gradient pass (by Wᵀ, laid out once per step: `nn::TransposedWeights`)
//! and the first-layer preconditioner's maps use the same kernels (session 60: another 2–6 %).

/// e^x in f32 to a few ulp, with no calls and no branches, so that loops over it vectorise (the runtime's SiLU
/// and the training passes' sigmoids): e^x = 2^n · e^r with n = round(x / ln 2) and |r| ≤ ln 2 / 2 (Cody–Waite:
/// ln 2 in two parts), e^r by its Taylor series (truncation below half an ulp at these |r|). Adding 1.5·2²³
/// rounds x / ln 2 to the integer n that then sits in the low bits of the sum, from which 2^n's exponent field is
/// built without a float→int conversion. x is clamped to the range where 2^n is a normal number. `FUSED`: one
/// rounding per multiply-add (only from code compiled for FMA).
#[inline(always)]
pub fn exp_f32<const FUSED: bool>(x: f32) -> f32 {
    let madd = |a: f32, b: f32, c: f32| if FUSED { a.mul_add(b, c) } else { a * b + c };
    const MAGIC: f32 = 12_582_912.0; // 1.5·2²³
    let x = x.clamp(-87.0, 88.0);
    let t = madd(x, std::f32::consts::LOG2_E, MAGIC);
    let n = t - MAGIC;
    let r = madd(n, -0.693_359_4, x);
    let r = madd(n, 2.121_944_4e-4, r);
    const C: [f32; 8] = [1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0];
    C.iter().skip(1).fold(C[0], |p, &c| madd(p, r, c)) * f32::from_bits(t.to_bits().wrapping_add(127) << 23)
}

/// A floating-point type the products run in: f64 everywhere, f32 for the networks' training passes
/// (`training.precision`).
pub trait Real:
    Copy
    + Default
    + PartialEq
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
{
    /// The value rounded to this type.
    fn of(x: f64) -> Self;
    /// The value as f64 (exact).
    fn f64(self) -> f64;
    /// The logistic sigmoid 1/(1 + e^−x) of the value: the standard library's exponential in f64; in f32 from
    /// [`exp_f32`], a loop the compiler vectorises (the f64 library call per element was 5 % of a naphthalene
    /// training step; the f32 passes need no more than f32's precision).
    fn sigmoid(self) -> Self;
    /// matrixmultiply's `sgemm` or `dgemm`.
    ///
    /// # Safety
    /// As matrixmultiply's: every element the strides reach lies inside the allocations.
    #[allow(clippy::too_many_arguments)]
    unsafe fn raw_gemm(
        m: usize, k: usize, n: usize, a: *const Self, rsa: isize, csa: isize, b: *const Self, rsb: isize, csb: isize,
        beta: Self, c: *mut Self, rsc: isize,
    );

    /// z (n × o) += x (n × k) · w (k × o), all row-major: a layer's product over a batch of rows.
    fn acc_product(n: usize, k: usize, o: usize, x: &[Self], w: &[Self], z: &mut [Self]) {
        gemm(n, k, o, x, false, w, false, 1.0, z);
    }

    /// g (k × o) += xᵀ (k × m) · b (m × o), with x stored m × k; all row-major: a layer's weight gradient.
    fn acc_product_tn(k: usize, m: usize, o: usize, x: &[Self], b: &[Self], g: &mut [Self]) {
        gemm(k, m, o, x, true, b, false, 1.0, g);
    }
}

impl Real for f64 {
    fn of(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }
    fn f64(self) -> f64 {
        self
    }
    unsafe fn raw_gemm(
        m: usize, k: usize, n: usize, a: *const Self, rsa: isize, csa: isize, b: *const Self, rsb: isize, csb: isize,
        beta: Self, c: *mut Self, rsc: isize,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { matrixmultiply::dgemm(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, beta, c, rsc, 1) }
    }
}

impl Real for f32 {
    #[inline(always)]
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + exp_f32::<false>(-self))
    }

    fn acc_product(n: usize, k: usize, o: usize, x: &[Self], w: &[Self], z: &mut [Self]) {
        #[cfg(target_arch = "x86_64")]
        if has_layer_kernels(o) && x.len() >= n * k && w.len() >= k * o && z.len() >= n * o {
            // SAFETY: the CPU has the kernel's features; the lengths are checked above.
            unsafe { acc_product_64_avx512(n, k, o, x, w, z) };
            return;
        }
        gemm(n, k, o, x, false, w, false, 1.0, z);
    }

    fn acc_product_tn(k: usize, m: usize, o: usize, x: &[Self], b: &[Self], g: &mut [Self]) {
        #[cfg(target_arch = "x86_64")]
        if has_layer_kernels(o) && x.len() >= m * k && b.len() >= m * o && g.len() >= k * o {
            // SAFETY: the CPU has the kernel's features; the lengths are checked above.
            unsafe { acc_product_tn_64_avx512(k, m, o, x, b, g) };
            return;
        }
        gemm(k, m, o, x, true, b, false, 1.0, g);
    }

    fn of(x: f64) -> Self {
        x as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
    unsafe fn raw_gemm(
        m: usize, k: usize, n: usize, a: *const Self, rsa: isize, csa: isize, b: *const Self, rsb: isize, csb: isize,
        beta: Self, c: *mut Self, rsc: isize,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { matrixmultiply::sgemm(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, beta, c, rsc, 1) }
    }
}

/// C (m×n) = op(A)·op(B) + beta·C. `ta`: A is stored k×m; `tb`: B is stored n×k.
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Real>(m: usize, k: usize, n: usize, a: &[T], ta: bool, b: &[T], tb: bool, beta: f64, c: &mut [T]) {
    let av = if ta { View { data: a, rs: 1, cs: m } } else { View { data: a, rs: k, cs: 1 } };
    let bv = if tb { View { data: b, rs: 1, cs: k } } else { View { data: b, rs: n, cs: 1 } };
    gemm_view(m, k, n, av, bv, beta, c, n);
}

/// A strided matrix: element (i, j) is `data[i·rs + j·cs]`. Lets a block of a larger matrix (e.g. the
/// columns of one angular order) enter a product without being copied out.
#[derive(Clone, Copy)]
pub struct View<'a, T = f64> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

/// C (m×n, row stride `ldc`) = A (m×k) · B (k×n) + beta·C.
#[allow(clippy::too_many_arguments)]
pub fn gemm_view<T: Real>(m: usize, k: usize, n: usize, a: View<T>, b: View<T>, beta: f64, c: &mut [T], ldc: usize) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + cols.max(1) * cs - cs;
    assert!(
        k == 0 || (a.data.len() > last(m, k, a.rs, a.cs) && b.data.len() > last(k, n, b.rs, b.cs)),
        "gemm: a view reaches past its slice"
    );
    assert!(ldc >= n && c.len() > (m - 1) * ldc + n - 1, "gemm: output slice shorter than its shape");
    // SAFETY: the assertions above guarantee every index the product touches is inside the slices.
    unsafe {
        T::raw_gemm(
            m,
            k,
            n,
            a.data.as_ptr(),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr(),
            b.rs as isize,
            b.cs as isize,
            T::of(beta),
            c.as_mut_ptr(),
            ldc as isize,
        );
    }
}

/// Eigen-decomposition of a small symmetric matrix (`a`, n×n row-major) by cyclic Jacobi rotations: returns the
/// eigenvalues in descending order and the matching eigenvectors as the rows of an n×n matrix. For the n ≤ 64
/// covariance matrices of the density channels this is exact to rounding and needs no LAPACK.
pub fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let norm: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    for _sweep in 0..100 {
        let off: f64 = (0..n).flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j))).map(|(i, j)| a[i * n + j].powi(2)).sum();
        if off.sqrt() <= 1e-15 * norm.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vpk, vqk) = (v[p * n + k], v[q * n + k]);
                    v[p * n + k] = c * vpk - s * vqk;
                    v[q * n + k] = s * vpk + c * vqk;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j * n + j].total_cmp(&a[i * n + i]));
    let values = order.iter().map(|&i| a[i * n + i]).collect();
    let vectors = order.iter().flat_map(|&i| v[i * n..(i + 1) * n].to_vec()).collect();
    (values, vectors)
}

/// The `m` leading eigenpairs of the symmetric `c` (`[n][n]`) by orthogonal iteration from the `m` rows of `start`
/// (`[m][n]`, e.g. random), `iterations` times, then a Rayleigh–Ritz rotation in the subspace: eigenvalues in
/// descending order and the eigenvectors as orthonormal rows `[m][n]`. Shared by the domain guard's directions and
/// the first-layer preconditioner; their covariances have well-separated leading directions.
pub fn leading_eigen(c: &[f64], n: usize, start: Vec<f64>, m: usize, iterations: usize) -> (Vec<f64>, Vec<f64>) {
    if m == 0 {
        return (Vec::new(), Vec::new());
    }
    let mut q = start;
    orthonormalise(&mut q, m, n);
    let mut z = vec![0.0; m * n];
    for _ in 0..iterations {
        gemm(m, n, n, &q, false, c, false, 0.0, &mut z); // rows of Q times C (C symmetric)
        std::mem::swap(&mut q, &mut z);
        orthonormalise(&mut q, m, n);
    }
    gemm(m, n, n, &q, false, c, false, 0.0, &mut z);
    let mut small = vec![0.0; m * m];
    gemm(m, n, m, &z, false, &q, true, 0.0, &mut small);
    let (values, w) = symmetric_eigen(&small, m);
    let mut vectors = vec![0.0; m * n];
    gemm(m, m, n, &w, false, &q, false, 0.0, &mut vectors);
    (values, vectors)
}

/// Modified Gram–Schmidt, twice, on the `m` rows of `q` (`[m][n]`). A row that is (numerically) in the span of the
/// rows before it becomes zero: a covariance of fewer samples than dimensions has a null space, and its vectors
/// must not be blown up to unit length from rounding noise.
fn orthonormalise(q: &mut [f64], m: usize, n: usize) {
    for i in 0..m {
        let (done, rest) = q.split_at_mut(i * n);
        let row = &mut rest[..n];
        let before = row.iter().map(|a| a * a).sum::<f64>().sqrt();
        for _pass in 0..2 {
            for j in 0..i {
                let other = &done[j * n..(j + 1) * n];
                let d: f64 = other.iter().zip(row.iter()).map(|(a, b)| a * b).sum();
                row.iter_mut().zip(other).for_each(|(a, b)| *a -= d * b);
            }
        }
        let norm = row.iter().map(|a| a * a).sum::<f64>().sqrt();
        let s = if norm > 1e-10 * before && norm > 1e-300 { 1.0 / norm } else { 0.0 };
        row.iter_mut().for_each(|a| *a *= s);
    }
}

/// Whether [`Real::acc_product`] and [`Real::acc_product_tn`] in f32 run through the layer kernels for width `o`
/// here (not through matrixmultiply, which packs its operands on every call).
pub fn has_f32_layer_kernels(o: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    return has_layer_kernels(o);
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// Whether the AVX-512 layer kernels serve width `o`: a multiple of 64, on a CPU that has their features.
#[cfg(target_arch = "x86_64")]
fn has_layer_kernels(o: usize) -> bool {
    o > 0 && o.is_multiple_of(64) && std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma")
}

/// Rows of w per pass of [`acc_product_64_avx512`]: 64 KB of f32 weights, which stay in the core's L2 while
/// every block of rows of x passes over them.
const KB: usize = 256;

/// z (n × o) += x (n × k) · w (k × o), o a multiple of 64, with w's rows read where they lie: six rows of 64
/// columns of z in registers (24 vectors of 16) at a time, over blocks of [`KB`] rows of w. Every entry sums its
/// k products in order, one fused multiply-add each, so the result does not depend on n.
///
/// # Safety
/// The CPU must have AVX-512F and FMA; x, w and z must hold n·k, k·o and n·o values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn acc_product_64_avx512(n: usize, k: usize, o: usize, x: &[f32], w: &[f32], z: &mut [f32]) {
    for c0 in (0..o).step_by(64) {
        for k0 in (0..k).step_by(KB) {
            let kb = k0..(k0 + KB).min(k);
            let mut r0 = 0;
            while r0 < n {
                let at = (r0, c0, o);
                match n - r0 {
                    1 => rows_64::<1>(at, k, kb.clone(), x, w, z),
                    2 => rows_64::<2>(at, k, kb.clone(), x, w, z),
                    3 => rows_64::<3>(at, k, kb.clone(), x, w, z),
                    4 => rows_64::<4>(at, k, kb.clone(), x, w, z),
                    5 => rows_64::<5>(at, k, kb.clone(), x, w, z),
                    _ => rows_64::<6>(at, k, kb.clone(), x, w, z),
                }
                r0 += 6;
            }
        }
    }
}

/// R rows of [`acc_product_64_avx512`] from row r0, its 64 columns from c0 (`at` = (r0, c0, o)), over the rows
/// `kb` of w.
#[inline(always)]
fn rows_64<const R: usize>((r0, c0, o): (usize, usize, usize), k: usize, kb: std::ops::Range<usize>, x: &[f32], w: &[f32], z: &mut [f32]) {
    let mut acc = [[0f32; 64]; R];
    for (r, a) in acc.iter_mut().enumerate() {
        a.copy_from_slice(&z[(r0 + r) * o + c0..(r0 + r) * o + c0 + 64]);
    }
    let xs: [&[f32]; R] = std::array::from_fn(|r| &x[(r0 + r) * k + kb.start..(r0 + r) * k + kb.end]);
    for (kk, wrow) in w[kb.start * o..kb.end * o].chunks_exact(o).enumerate() {
        let wrow = &wrow[c0..c0 + 64];
        for r in 0..R {
            let xv = xs[r][kk];
            for t in 0..64 {
                acc[r][t] = xv.mul_add(wrow[t], acc[r][t]);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        z[(r0 + r) * o + c0..(r0 + r) * o + c0 + 64].copy_from_slice(a);
    }
}

/// g (k × o) += xᵀ · b with x (m × k) and b (m × o), o a multiple of 64: six rows of 64 columns of g in registers
/// at a time, each summing its m products in order and then added to g.
///
/// # Safety
/// The CPU must have AVX-512F and FMA; x, b and g must hold m·k, m·o and k·o values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn acc_product_tn_64_avx512(k: usize, m: usize, o: usize, x: &[f32], b: &[f32], g: &mut [f32]) {
    for c0 in (0..o).step_by(64) {
        let mut i0 = 0;
        while i0 < k {
            let at = (i0, c0, o);
            match k - i0 {
                1 => cols_64::<1>(at, k, m, x, b, g),
                2 => cols_64::<2>(at, k, m, x, b, g),
                3 => cols_64::<3>(at, k, m, x, b, g),
                4 => cols_64::<4>(at, k, m, x, b, g),
                5 => cols_64::<5>(at, k, m, x, b, g),
                _ => cols_64::<6>(at, k, m, x, b, g),
            }
            i0 += 6;
        }
    }
}

/// R rows of [`acc_product_tn_64_avx512`] from row i0, its 64 columns from c0 (`at` = (i0, c0, o)).
#[inline(always)]
fn cols_64<const R: usize>((i0, c0, o): (usize, usize, usize), k: usize, m: usize, x: &[f32], b: &[f32], g: &mut [f32]) {
    let mut acc = [[0f32; 64]; R];
    for (r, brow) in b.chunks_exact(o).take(m).enumerate() {
        let brow = &brow[c0..c0 + 64];
        let xr = &x[r * k + i0..r * k + i0 + R];
        for q in 0..R {
            let xv = xr[q];
            for t in 0..64 {
                acc[q][t] = xv.mul_add(brow[t], acc[q][t]);
            }
        }
    }
    for (q, a) in acc.iter().enumerate() {
        for (g, a) in g[(i0 + q) * o + c0..(i0 + q) * o + c0 + 64].iter_mut().zip(a) {
            *g += a;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The f32 sigmoid of the training passes against the f64 one, over the range SiLU layers see and beyond
    /// (where it saturates to 0 and 1 without NaN).
    #[test]
    fn f32_sigmoids_agree_with_f64_to_f32_precision() {
        let mut worst = 0.0f64;
        for i in 0..=100_000 {
            let z = -40.0 + 80.0 * i as f64 / 100_000.0;
            let (a, b) = ((z as f32).sigmoid() as f64, (z as f32 as f64).sigmoid());
            worst = worst.max((a - b).abs() / b);
        }
        assert!(worst < 4.0 * f32::EPSILON as f64, "relative error {worst:.2e}");
        let low = (-1000.0f32).sigmoid();
        assert!((0.0..1e-37).contains(&low), "σ(−1000) = {low}");
        assert_eq!(1000.0f32.sigmoid(), 1.0);
    }

    /// The f32 layer products (AVX-512 kernels where the CPU has them, matrixmultiply elsewhere) against the
    /// products in f64, for row counts around the kernels' blocks of six, depths around their blocks of w, one and
    /// two blocks of 64 columns, and a width the kernels leave to matrixmultiply.
    #[test]
    fn layer_products_match_the_f64_products() {
        let mut rng = crate::rng::Rng::new(12);
        for (n, k, o) in [(1, 1, 64), (5, 7, 64), (6, 300, 64), (7, 256, 64), (13, 700, 64), (32, 2, 64), (64, 513, 64), (9, 300, 128), (3, 5, 48)] {
            let x: Vec<f32> = (0..n * k).map(|_| rng.normal() as f32).collect();
            let w: Vec<f32> = (0..k * o).map(|_| rng.normal() as f32).collect();
            let z0: Vec<f32> = (0..n * o).map(|_| rng.normal() as f32).collect();
            let b: Vec<f32> = (0..n * o).map(|_| rng.normal() as f32).collect();
            let g0: Vec<f32> = (0..k * o).map(|_| rng.normal() as f32).collect();
            let f = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
            let (mut z, mut z64) = (z0.clone(), f(&z0));
            f32::acc_product(n, k, o, &x, &w, &mut z);
            gemm(n, k, o, &f(&x), false, &f(&w), false, 1.0, &mut z64);
            let (mut g, mut g64) = (g0.clone(), f(&g0));
            f32::acc_product_tn(k, n, o, &x, &b, &mut g);
            gemm(k, n, o, &f(&x), true, &f(&b), false, 1.0, &mut g64);
            for (got, want, depth) in [(&z, &z64, k), (&g, &g64, n)] {
                let tol = 1e-6 * (depth as f64).sqrt() * 8.0;
                for (a, e) in got.iter().zip(want.iter()) {
                    assert!((*a as f64 - e).abs() < tol * (1.0 + e.abs()), "n {n} k {k} o {o}: {a} against {e}");
                }
            }
        }
    }

    #[test]
    fn symmetric_eigen_reconstructs_the_matrix() {
        let mut rng = crate::rng::Rng::new(3);
        let n = 7;
        let b: Vec<f64> = (0..n * n).map(|_| rng.normal()).collect();
        let mut a = vec![0.0; n * n];
        gemm(n, n, n, &b, true, &b, false, 0.0, &mut a);
        let (values, vectors) = symmetric_eigen(&a, n);
        assert!(values.windows(2).all(|w| w[0] >= w[1]));
        for i in 0..n {
            for j in 0..n {
                let rebuilt: f64 = (0..n).map(|k| values[k] * vectors[k * n + i] * vectors[k * n + j]).sum();
                assert!((rebuilt - a[i * n + j]).abs() < 1e-10 * values[0], "({i},{j})");
                let dot: f64 = (0..n).map(|k| vectors[i * n + k] * vectors[j * n + k]).sum();
                assert!((dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn all_layouts_agree_with_a_naive_product() {
        let mut rng = crate::rng::Rng::new(1);
        for &(m, k, n) in &[(3, 5, 7), (60, 17, 9), (1, 1, 1)] {
            for ta in [false, true] {
                for tb in [false, true] {
                    let a: Vec<f64> = (0..m * k).map(|_| rng.normal()).collect();
                    let b: Vec<f64> = (0..k * n).map(|_| rng.normal()).collect();
                    let c0: Vec<f64> = (0..m * n).map(|_| rng.normal()).collect();
                    let at = |i: usize, r: usize| if ta { a[r * m + i] } else { a[i * k + r] };
                    let bt = |r: usize, j: usize| if tb { b[j * k + r] } else { b[r * n + j] };
                    let mut c = c0.clone();
                    gemm(m, k, n, &a, ta, &b, tb, 0.5, &mut c);
                    for i in 0..m {
                        for j in 0..n {
                            let want = 0.5 * c0[i * n + j] + (0..k).map(|r| at(i, r) * bt(r, j)).sum::<f64>();
                            assert!((c[i * n + j] - want).abs() < 1e-12, "{m}x{k}x{n} ta={ta} tb={tb}");
                        }
                    }
                }
            }
        }
    }
}

/// Instruction sets the hand-written kernels (descriptor, native network engine) are compiled for: AVX2 with fused
/// multiply-adds, or portable code (CPUs without FMA, before ~2013, whose last bits differ). AVX-512 was measured
/// slower here (the kernels are short and the wider units lower the clock), so it is not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
}

impl Isa {
    /// The fastest instruction set of this CPU.
    pub(crate) fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let fma = std::arch::is_x86_feature_detected!("fma");
            if fma && std::arch::is_x86_feature_detected!("avx2") {
                return Isa::Avx2Fma;
            }
        }
        Isa::Portable
    }
}

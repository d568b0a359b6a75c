//! Dense matrix product on row-major slices (matrixmultiply's blocked dgemm underneath).
//!
//! Measured: for the network's shapes (≤ 21 atoms × 1500 features × 64) matrixmultiply, packing included, beat
//! hand-written AVX2 row-axpy and dot kernels (9 vs 6 GFLOP/s), so there is one code path.

/// C (m×n) = op(A)·op(B) + beta·C. `ta`: A is stored k×m; `tb`: B is stored n×k.
#[allow(clippy::too_many_arguments)]
pub fn gemm(m: usize, k: usize, n: usize, a: &[f64], ta: bool, b: &[f64], tb: bool, beta: f64, c: &mut [f64]) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "gemm: slice shorter than its shape");
    let (rsa, csa) = if ta { (1, m as isize) } else { (k as isize, 1) };
    let (rsb, csb) = if tb { (1, k as isize) } else { (n as isize, 1) };
    // SAFETY: the assertion above guarantees every index dgemm touches is inside the slices.
    unsafe {
        matrixmultiply::dgemm(m, k, n, 1.0, a.as_ptr(), rsa, csa, b.as_ptr(), rsb, csb, beta, c.as_mut_ptr(), n as isize, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

//! A research tool: how far a **linear** model on pilip's descriptor gets (the question behind a least-squares
//! baseline under the networks; `docs/benchmarks.md`, session 36). Per element, E_i = w_Z · x_i + c_Z on the
//! standardised descriptor x_i of the rMD17 settings (`examples/configs/rmd17.toml`), fitted by ridge least
//! squares to energies and forces (forces are −Σ_i w·∂x_i/∂r, one descriptor JVP per Cartesian component), then
//! tested. With `--residuals DIR` it writes the split's train + validation structures and the test file with the
//! linear model's predictions subtracted, so that `pilip train` can fit a network to what the linear model
//! misses (train with `data.split = "contiguous"` and the same `n_train` / `n_valid`).
//!
//! ```text
//! cargo run --release --example linear_fit -- TRAIN.extxyz TEST.extxyz RUN/split.json \
//!     [--ridge 3e-4] [--energy-weight 20] [--n-radial 8] [--four-body K] [--residuals DIR]
//! ```
//! `split.json` is the split of a `pilip train` run on TRAIN (its `train` indices are fitted). `--ridge` is
//! relative to the mean diagonal of the normal equations; `--four-body K` adds the bispectrum family's
//! four-body invariants of K channels (compression at its PCA start). Memory grows as (elements × features)².

use pilip::descriptor::four_body::Bispectrum;
use pilip::descriptor::{Descriptor, DescriptorSpec, Descriptors};
use pilip::io::extxyz::{read_file, write_file, LabelKeys};
use pilip::model::power_spectrum::PowerSpectrumModel;
use pilip::neighbors::NeighborList;
use pilip::{Frame, Vec3};
use rayon::prelude::*;
use std::error::Error;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

struct Options {
    train: String,
    test: String,
    split: String,
    ridge: f64,
    energy_weight: f64,
    n_radial: usize,
    four_body: usize,
    residuals: Option<String>,
}

fn options() -> Res<Options> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: linear_fit TRAIN.extxyz TEST.extxyz SPLIT.json [--ridge X] [--energy-weight X] [--n-radial N] [--four-body K] [--residuals DIR]";
    let [train, test, split] = match &args[..args.len().min(3)] {
        [a, b, c] => [a.clone(), b.clone(), c.clone()],
        _ => return Err(usage.into()),
    };
    let mut o = Options { train, test, split, ridge: 3e-4, energy_weight: 20.0, n_radial: 8, four_body: 0, residuals: None };
    let mut rest = args[3..].iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().ok_or_else(|| format!("{flag} needs a value; {usage}"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--ridge" => o.ridge = value.parse().map_err(|e| bad(&e))?,
            "--energy-weight" => o.energy_weight = value.parse().map_err(|e| bad(&e))?,
            "--n-radial" => o.n_radial = value.parse().map_err(|e| bad(&e))?,
            "--four-body" => o.four_body = value.parse().map_err(|e| bad(&e))?,
            "--residuals" => o.residuals = Some(value.clone()),
            _ => return Err(format!("unknown option {flag}; {usage}").into()),
        }
    }
    Ok(o)
}

/// The `train` and `valid` indices of a `split.json`.
fn read_split(path: &str, n_frames: usize) -> Res<(Vec<usize>, Vec<usize>)> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?)?;
    let ids = |key: &str| -> Res<Vec<usize>> {
        let list = v[key].as_array().ok_or_else(|| format!("{path}: no '{key}' list"))?;
        list.iter()
            .map(|x| x.as_u64().map(|i| i as usize).filter(|&i| i < n_frames).ok_or_else(|| format!("{path}: bad index {x} in '{key}'").into()))
            .collect()
    };
    Ok((ids("train")?, ids("valid")?))
}

/// The linear model: descriptor, per-element column scales and the fitted coefficients (`[species][feature]`
/// then one constant per species).
struct Linear {
    descriptor: Descriptor,
    species: Vec<u32>,
    scale: Vec<f64>,
    coef: Vec<f64>,
}

impl Linear {
    fn width(&self) -> usize {
        self.species.len() * (self.descriptor.n_features() + 1)
    }

    fn species_of(&self, f: &Frame) -> Res<Vec<usize>> {
        f.numbers.iter().map(|z| self.species.iter().position(|s| s == z).ok_or_else(|| format!("element Z = {z} is not in the training set").into())).collect()
    }

    fn descriptors(&self, f: &Frame) -> Res<(Vec<usize>, Descriptors)> {
        let sp = self.species_of(f)?;
        let nl = NeighborList::for_frame(f, self.descriptor.spec.cutoff)?;
        let d = self.descriptor.compute(&sp, nl);
        Ok((sp, d))
    }

    /// Design rows of one structure (its species indices and descriptors): the energy, then −∂E/∂r for each
    /// atom and component.
    fn rows(&self, sp: &[usize], d: &Descriptors) -> Vec<Vec<f64>> {
        let (n, p, ns) = (d.n_atoms, d.n_features, self.species.len());
        let mut out = vec![vec![0.0; self.width()]];
        for i in 0..n {
            let s = sp[i];
            for j in 0..p {
                out[0][s * p + j] += d.features[i * p + j] * self.scale[s * p + j];
            }
            out[0][ns * p + s] += 1.0;
        }
        for k in 0..n {
            for c in 0..3 {
                let mut displacement = vec![[0.0; 3]; n];
                displacement[k][c] = 1.0;
                let t = self.descriptor.jvp(d, Some(&displacement), None);
                let mut r = vec![0.0; self.width()];
                for i in 0..n {
                    let s = sp[i];
                    for j in 0..p {
                        r[s * p + j] -= t[i * p + j] * self.scale[s * p + j];
                    }
                }
                out.push(r);
            }
        }
        out
    }

    fn predict(&self, f: &Frame) -> Res<(f64, Vec<Vec3>)> {
        let (sp, d) = self.descriptors(f)?;
        let r = self.rows(&sp, &d);
        let dot = |row: &Vec<f64>| row.iter().zip(&self.coef).map(|(a, b)| a * b).sum::<f64>();
        Ok((dot(&r[0]), (0..f.len()).map(|k| [dot(&r[1 + 3 * k]), dot(&r[2 + 3 * k]), dot(&r[3 + 3 * k])]).collect()))
    }
}

/// Per-element column scales 1/σ of the networks' standardisation (`PowerSpectrumModel::fit_feature_statistics`
/// with the shipped `model.feature_std_floor = 0.3`); the means fall into the per-element constants.
fn feature_scales(spec: &DescriptorSpec, four_body: Option<Bispectrum>, species: &[u32], frames: &[(Vec<usize>, Descriptors)]) -> Res<Vec<f64>> {
    let mut statistics = PowerSpectrumModel::new(spec.clone(), four_body, species, &[], 0)?;
    statistics.fit_feature_statistics(frames.iter().map(|(sp, d)| (sp.as_slice(), d)), 0.3);
    Ok(statistics.feature_std.iter().flatten().map(|sd| 1.0 / sd).collect())
}

/// Solves G x = b for symmetric positive definite G (lower triangle used; overwritten by its Cholesky factor).
fn cholesky_solve(g: &mut [f64], b: &mut [f64], n: usize) -> Res<()> {
    for j in 0..n {
        let djj2 = g[j * n + j] - (0..j).map(|k| g[j * n + k] * g[j * n + k]).sum::<f64>();
        if djj2 <= 0.0 {
            return Err("the normal equations are not positive definite: raise --ridge".into());
        }
        let djj = djj2.sqrt();
        g[j * n + j] = djj;
        let (head, tail) = g.split_at_mut((j + 1) * n);
        let row_j = &head[j * n..j * n + j];
        tail.par_chunks_mut(n).for_each(|ri| ri[j] = (ri[j] - (0..j).map(|k| ri[k] * row_j[k]).sum::<f64>()) / djj);
    }
    for i in 0..n {
        b[i] = (b[i] - (0..i).map(|k| g[i * n + k] * b[k]).sum::<f64>()) / g[i * n + i];
    }
    for i in (0..n).rev() {
        b[i] = (b[i] - (i + 1..n).map(|k| g[k * n + i] * b[k]).sum::<f64>()) / g[i * n + i];
    }
    Ok(())
}

fn labels<'a>(f: &'a Frame, path: &str) -> Res<(f64, &'a [Vec3])> {
    match (f.energy, f.forces.as_deref()) {
        (Some(e), Some(fs)) => Ok((e, fs)),
        _ => Err(format!("{path}: every structure needs an energy and forces").into()),
    }
}

fn main() -> Res<()> {
    let o = options()?;
    let keys = LabelKeys::default();
    let all = read_file(o.train.as_ref(), &keys)?;
    let test = read_file(o.test.as_ref(), &keys)?;
    let (train_ids, valid_ids) = read_split(&o.split, all.len())?;
    let train: Vec<&Frame> = train_ids.iter().map(|&i| &all[i]).collect();
    let mut species: Vec<u32> = train.iter().flat_map(|f| f.numbers.iter().copied()).collect();
    species.sort_unstable();
    species.dedup();
    let spec = DescriptorSpec { cutoff: 5.0, r_min: 0.8, n_radial: o.n_radial, l_max: 4, radial_width: 0.6, radial_scale: 1.0, ..Default::default() };
    spec.validate()?;
    let mut lin = Linear { descriptor: Descriptor::new(&spec, &species), species, scale: Vec::new(), coef: Vec::new() };
    let mut four_body = None;
    if o.four_body > 0 {
        let ds = train.par_iter().map(|f| lin.descriptors(f)).collect::<Res<Vec<_>>>()?;
        let mut b = Bispectrum { channels: o.four_body, l_max: 3, ..Default::default() };
        lin.descriptor.fit_compression(&mut b, ds.iter().map(|(_, d)| d));
        lin.descriptor = lin.descriptor.clone().with_four_body(&b)?;
        four_body = Some(b);
    }
    let clock = std::time::Instant::now();
    let ds = train.par_iter().map(|f| lin.descriptors(f)).collect::<Res<Vec<_>>>()?;
    lin.scale = feature_scales(&spec, four_body, &lin.species, &ds)?;
    let w = lin.width();
    eprintln!("{} features per atom, {} elements: {w} coefficients", lin.descriptor.n_features(), lin.species.len());
    // normal equations Aᵀ A and Aᵀ y, 16 structures' rows at a time; energy rows per atom, weighted by √energy_weight
    let (mut g, mut rhs) = (vec![0.0; w * w], vec![0.0; w]);
    for (block, block_ds) in train.chunks(16).zip(ds.chunks(16)) {
        let parts = block
            .par_iter()
            .zip(block_ds)
            .map(|(f, (sp, d))| -> Res<(Vec<Vec<f64>>, Vec<f64>)> {
                let (e, forces) = labels(f, &o.train)?;
                let mut rows = lin.rows(sp, d);
                let ew = o.energy_weight.sqrt() / f.len() as f64;
                rows[0].iter_mut().for_each(|v| *v *= ew);
                let y = std::iter::once(e * ew).chain(forces.iter().flatten().copied()).collect();
                Ok((rows, y))
            })
            .collect::<Res<Vec<_>>>()?;
        let m: Vec<f64> = parts.iter().flat_map(|(rows, _)| rows.iter().flatten().copied()).collect();
        let y: Vec<f64> = parts.iter().flat_map(|(_, y)| y.iter().copied()).collect();
        let nrow = y.len();
        // SAFETY: m is [nrow][w] row-major and g is [w][w]; the strides describe exactly those buffers.
        unsafe { matrixmultiply::dgemm(w, nrow, w, 1.0, m.as_ptr(), 1, w as isize, m.as_ptr(), w as isize, 1, 1.0, g.as_mut_ptr(), w as isize, 1) };
        for (r, yr) in y.iter().enumerate() {
            rhs.iter_mut().zip(&m[r * w..(r + 1) * w]).for_each(|(b, a)| *b += a * yr);
        }
    }
    let mean_diagonal = (0..w).map(|i| g[i * w + i]).sum::<f64>() / w as f64;
    let n_weights = w - lin.species.len();
    for i in 0..w {
        g[i * w + i] += mean_diagonal * if i < n_weights { o.ridge } else { 1e-10 };
    }
    lin.coef = rhs;
    cholesky_solve(&mut g, &mut lin.coef, w)?;
    eprintln!("fitted in {:.1} s", clock.elapsed().as_secs_f64());
    // each structure is predicted once, for its errors and (with --residuals) its residual labels
    let predict_all = |frames: &[&Frame]| frames.par_iter().map(|f| lin.predict(f)).collect::<Res<Vec<_>>>();
    let test_refs: Vec<&Frame> = test.iter().collect();
    let (train_predicted, test_predicted) = (predict_all(&train)?, predict_all(&test_refs)?);
    for (name, frames, predicted, path) in [("train", &train, &train_predicted, &o.train), ("test", &test_refs, &test_predicted, &o.test)] {
        let (mut energy, mut force, mut n_components) = (0.0, 0.0, 0);
        for (f, (pe, pf)) in frames.iter().zip(predicted) {
            let (e, forces) = labels(f, path)?;
            energy += (pe - e).abs();
            force += forces.iter().flatten().zip(pf.iter().flatten()).map(|(a, b)| (a - b).abs()).sum::<f64>();
            n_components += 3 * f.len();
        }
        let (e, f) = (1e3 * energy / frames.len().max(1) as f64, 1e3 * force / n_components.max(1) as f64);
        println!("{name}: energy MAE {e:.2} meV, force MAE {f:.2} meV/Å (ridge {}, energy weight {}, n_radial {}, four-body {})", o.ridge, o.energy_weight, o.n_radial, o.four_body);
    }
    if let Some(dir) = &o.residuals {
        let residual = |f: &Frame, (pe, pf): &(f64, Vec<Vec3>)| -> Frame {
            let mut r = f.clone();
            r.energy = f.energy.map(|e| e - pe);
            r.forces = f.forces.as_ref().map(|fs| fs.iter().zip(pf).map(|(a, b)| [a[0] - b[0], a[1] - b[1], a[2] - b[2]]).collect());
            r
        };
        let valid: Vec<&Frame> = valid_ids.iter().map(|&i| &all[i]).collect();
        let valid_predicted = predict_all(&valid)?;
        let fitted: Vec<Frame> = train.iter().chain(&valid).zip(train_predicted.iter().chain(&valid_predicted)).map(|(f, p)| residual(f, p)).collect();
        let tested: Vec<Frame> = test.iter().zip(&test_predicted).map(|(f, p)| residual(f, p)).collect();
        std::fs::create_dir_all(dir).map_err(|e| format!("{dir}: {e}"))?;
        write_file(format!("{dir}/train.extxyz").as_ref(), &fitted, &keys)?;
        write_file(format!("{dir}/test.extxyz").as_ref(), &tested, &keys)?;
        println!("wrote {dir}/train.extxyz ({} train then {} validation structures) and {dir}/test.extxyz", train.len(), valid.len());
    }
    Ok(())
}

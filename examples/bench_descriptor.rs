//! Times the descriptor's three kernels (forward, VJP, JVP) on every structure of an extended-XYZ file, one
//! thread, with the power-spectrum descriptor of a config (default `examples/configs/rmd17.toml`; a four-body
//! part is left out): what a training step spends on the descriptor. A file of a thousand structures keeps more
//! descriptors than the caches hold, as training does; a file of ten measures the kernels' arithmetic alone.
//!
//! ```text
//! cargo run --release --example bench_descriptor -- FILE.extxyz [REPEATS] [CONFIG.toml]
//! ```
//! Prints µs per structure for each kernel (best of REPEATS passes, default 5).

use pilip::config::Config;
use pilip::descriptor::Descriptor;
use pilip::io::extxyz::read_structures;
use pilip::neighbors::NeighborList;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let file = args.first().ok_or("usage: bench_descriptor FILE.extxyz [REPEATS] [CONFIG.toml]")?;
    let repeats: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let config = args.get(2).map_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/configs/rmd17.toml"), Into::into);
    let spec = Config::load(&config, &[])?.descriptor;
    let frames = read_structures(std::path::Path::new(file))?;
    let mut elements: Vec<u32> = frames.iter().flat_map(|f| f.numbers.iter().copied()).collect();
    elements.sort_unstable();
    elements.dedup();
    let descriptor = Descriptor::new(&spec, &elements);
    let mut inputs = Vec::new();
    for f in &frames {
        let species: Vec<usize> = f.numbers.iter().map(|z| elements.binary_search(z).unwrap_or(0)).collect();
        inputs.push((species, NeighborList::for_frame(f, spec.cutoff)?));
    }
    let n = frames.len() as f64;
    let time = |mut pass: Box<dyn FnMut() -> f64 + '_>| (0..repeats).map(|_| pass()).fold(f64::INFINITY, f64::min) / n * 1e6;
    let mut descriptors: Vec<_> = inputs.iter().map(|(s, nl)| descriptor.compute(s, nl.clone())).collect();
    // the forward pass into each structure's buffers of the pass before (no allocation, as an MD step)
    let forward = time(Box::new(|| {
        let lists: Vec<NeighborList> = inputs.iter().map(|(_, nl)| nl.clone()).collect();
        let t = Instant::now();
        for (((s, _), nl), d) in inputs.iter().zip(lists).zip(descriptors.iter_mut()) {
            descriptor.compute_into(s, nl, d, false);
        }
        t.elapsed().as_secs_f64()
    }));
    let tangents: Vec<Vec<[f64; 3]>> =
        frames.iter().map(|f| (0..f.positions.len()).map(|i| [0.01 * (i % 3) as f64, -0.02, 0.005 * i as f64]).collect()).collect();
    // an arbitrary ∂E/∂G per structure, made before the clock starts
    let dgs: Vec<Vec<f64>> =
        descriptors.iter().map(|d| (0..d.n_atoms * d.n_features).map(|k| ((k % 7) as f64 - 3.0) * 1e-2).collect()).collect();
    let vjp = time(Box::new(|| {
        let t = Instant::now();
        for (d, dg) in descriptors.iter().zip(&dgs) {
            std::hint::black_box(descriptor.vjp(d, dg));
        }
        t.elapsed().as_secs_f64()
    }));
    let jvp = time(Box::new(|| {
        let t = Instant::now();
        for (d, u) in descriptors.iter().zip(&tangents) {
            std::hint::black_box(descriptor.jvp(d, Some(u), None));
        }
        t.elapsed().as_secs_f64()
    }));
    let atoms = frames.iter().map(|f| f.positions.len()).sum::<usize>() as f64 / n;
    println!("{file}: {} structures, {atoms:.1} atoms, {} features per atom", frames.len(), descriptor.n_features());
    println!("µs per structure (best of {repeats}): forward {forward:.1}, vjp {vjp:.1}, jvp {jvp:.1}");
    Ok(())
}

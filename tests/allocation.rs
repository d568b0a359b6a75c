//! An MD step allocates nothing once the first step of that size is done: one thread, the default (native)
//! engine, through the C ABI call a LAMMPS pair style makes. Counted by this binary's global allocator, which
//! counts the allocations of the thread that asks for it.
mod common;

use common::*;
use pilip::c_api::*;
use pilip::frame::Vec3;
use pilip::onnx::metadata::Dtype;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ffi::CString;

struct Counting;

thread_local! {
    /// Allocations of this thread since counting started (None: not counting).
    static ALLOCATIONS: Cell<Option<usize>> = const { Cell::new(None) };
}

fn count_one() {
    let _ = ALLOCATIONS.try_with(|c| {
        if let Some(n) = c.get() {
            c.set(Some(n + 1));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations(f: impl FnOnce()) -> usize {
    ALLOCATIONS.with(|c| c.set(Some(0)));
    f();
    ALLOCATIONS.with(|c| c.replace(None)).unwrap_or(0)
}

/// A jittered Al/Cu cluster of 64 atoms, all of them centres, full neighbour lists (every other atom within
/// cutoff + 1 Å, as an MD engine's list with a skin).
fn cluster(seed: u64) -> (Vec<Vec3>, Vec<i32>, Vec<Vec<i32>>) {
    let mut rng = pilip::rng::Rng::new(seed);
    let mut pos = Vec::new();
    for a in 0..4 {
        for b in 0..4 {
            for c in 0..4 {
                pos.push([a, b, c].map(|k| 2.1 * k as f64 + 0.1 * rng.normal()));
            }
        }
    }
    let numbers = (0..pos.len()).map(|i| [13, 29][i % 2]).collect();
    let lists = (0..pos.len())
        .map(|i| {
            (0..pos.len())
                .filter(|&j| j != i && (0..3).map(|k| (pos[j][k] - pos[i][k]).powi(2)).sum::<f64>() < 4.0f64.powi(2))
                .map(|j| j as i32)
                .collect()
        })
        .collect();
    (pos, numbers, lists)
}

#[test]
fn an_md_step_through_the_c_abi_allocates_nothing_after_the_first() {
    let dir = tmpdir("allocation");
    for dtype in [Dtype::F32, Dtype::F64] {
        for model in [cell_model(), bispectrum_cell_model()] {
            let path = CString::new(write_model(&dir, &model, dtype).to_str().unwrap()).unwrap();
            let mut m = std::ptr::null_mut();
            assert_eq!(unsafe { pilip_model_load(path.as_ptr(), std::ptr::null(), &mut m) }, PILIP_SUCCESS);
            let (mut pos, numbers, lists) = cluster(5);
            let n = pos.len();
            let centers: Vec<i32> = (0..n as i32).collect();
            let counts: Vec<i32> = lists.iter().map(|l| l.len() as i32).collect();
            let pointers: Vec<*const i32> = lists.iter().map(|l| l.as_ptr()).collect();
            let (mut energy, mut forces, mut virial) = (0.0, vec![0.0; 3 * n], [0.0; 9]);
            let mut step = |pos: &[Vec3]| {
                let status = unsafe {
                    pilip_model_compute_neighbors(
                        m,
                        n,
                        pos.as_ptr() as *const f64,
                        numbers.as_ptr(),
                        n,
                        centers.as_ptr(),
                        counts.as_ptr(),
                        pointers.as_ptr(),
                        &mut energy,
                        std::ptr::null_mut(),
                        forces.as_mut_ptr(),
                        virial.as_mut_ptr(),
                        std::ptr::null_mut(),
                    )
                };
                assert_eq!(status, PILIP_SUCCESS);
            };
            let first = allocations(|| step(&pos));
            step(&pos);
            // the atoms move a little, as in an MD step (the same pairs stay within the cutoff)
            for p in pos.iter_mut() {
                p[0] += 1e-3;
                p[2] -= 2e-3;
            }
            let later = allocations(|| step(&pos));
            assert!(first > 0, "the first step sizes the buffers, so it allocates");
            assert_eq!(later, 0, "{dtype:?}: a later step of the same size allocated {later} times");
            assert!(energy.is_finite() && forces.iter().all(|f| f.is_finite()));
            unsafe { pilip_model_free(m) };
        }
    }
}

//! The C ABI of libpilip (`include/pilip.h` is generated from this file by cbindgen in build.rs).
//!
//! Conventions: every fallible function returns a `pilip_status_t` (0 = success) and keeps a message for the
//! calling thread in `pilip_last_error()`; every body runs inside `catch_unwind`, so no Rust panic crosses the
//! ABI (it becomes `PILIP_ERROR_INTERNAL`); handles are opaque and created through out-parameters; outputs are
//! caller-allocated and each may be NULL to skip it.
//!
//! Safety contract of every `unsafe` function here (stated once instead of on each): every pointer is NULL where
//! the documentation allows it, or valid for the documented number of elements; a model pointer comes from
//! `pilip_model_load` and is not used after `pilip_model_free`; strings are NUL-terminated.
#![allow(clippy::missing_safety_doc)]

use crate::error::Error;
use crate::runtime::{LocalOutputs, LocalSystem, Potential, RuntimeOptions};
use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Status code returned by every fallible pilip function (0 = success).
pub type pilip_status_t = i32;
/// The call succeeded.
pub const PILIP_SUCCESS: pilip_status_t = 0;
/// An argument is invalid: a NULL pointer where data is required, a size that does not match, a non-finite
/// coordinate, an atomic number the model does not know, malformed options.
pub const PILIP_ERROR_INVALID_ARGUMENT: pilip_status_t = 1;
/// A file could not be read.
pub const PILIP_ERROR_IO: pilip_status_t = 2;
/// The file is not a pilip model this library can run (not ONNX, truncated, corrupted, newer format version,
/// unknown model family, inconsistent metadata or graph signature).
pub const PILIP_ERROR_MODEL: pilip_status_t = 3;
/// The requested network engine is not available (not compiled into this libpilip, or its library — ONNX
/// Runtime — cannot be found or loaded) or it failed while evaluating.
pub const PILIP_ERROR_ENGINE: pilip_status_t = 4;
/// A bug in pilip (an internal panic was caught). Please report it with the message.
pub const PILIP_ERROR_INTERNAL: pilip_status_t = 255;

/// Library version `MAJOR.MINOR.PATCH` from Cargo.toml (the header's `PILIP_VERSION_MAJOR/MINOR/PATCH` are
/// written from the same numbers by build.rs).
pub const PILIP_VERSION_MAJOR: i32 = version_number(env!("CARGO_PKG_VERSION_MAJOR"));
/// See [`PILIP_VERSION_MAJOR`].
pub const PILIP_VERSION_MINOR: i32 = version_number(env!("CARGO_PKG_VERSION_MINOR"));
/// See [`PILIP_VERSION_MAJOR`].
pub const PILIP_VERSION_PATCH: i32 = version_number(env!("CARGO_PKG_VERSION_PATCH"));
/// Version of this C ABI; incremented when a signature or a documented behaviour changes incompatibly (new
/// functions and new status codes are additions, not incompatible changes).
pub const PILIP_ABI_VERSION: i32 = 1;
/// Newest model-format version this library reads (older ones are read too; newer ones are refused).
pub const PILIP_MODEL_FORMAT_VERSION: i32 = 6;

/// A decimal version component at compile time.
const fn version_number(digits: &str) -> i32 {
    let bytes = digits.as_bytes();
    let mut value = 0;
    let mut k = 0;
    while k < bytes.len() {
        value = value * 10 + (bytes[k] - b'0') as i32;
        k += 1;
    }
    value
}

/// The status code of each kind of error: the one place where Rust errors become C status codes.
pub fn status_of(e: &Error) -> pilip_status_t {
    match e {
        Error::Io { .. } => PILIP_ERROR_IO,
        Error::Model(_) => PILIP_ERROR_MODEL,
        Error::Engine(_) => PILIP_ERROR_ENGINE,
        Error::Parse { .. } | Error::Config(_) | Error::Invalid(_) => PILIP_ERROR_INVALID_ARGUMENT,
    }
}

/// A loaded model. Immutable after `pilip_model_load`: one model may be used by any number of threads at once.
pub struct pilip_model_t {
    potential: Potential,
    metadata_json: CString,
    symbols: Vec<CString>,
    /// The centre list of the last `pilip_model_compute_neighbors` call, reused so that an MD step allocates
    /// nothing (a call that finds it in use by another thread makes its own).
    centers: std::sync::Mutex<Vec<usize>>,
}

/// An MD engine's neighbour lists as it passes them (`neighbor_counts[i]` entries at `neighbors[i]`, by atom
/// index), checked for every centre before any is read.
struct NeighborArrays {
    counts: *const i32,
    lists: *const *const i32,
}

// SAFETY: the arrays are only read, during the call that received them.
unsafe impl Sync for NeighborArrays {}

impl NeighborArrays {
    /// Checks that centre i's count is not negative and its list is not NULL when it has entries.
    unsafe fn check(&self, i: usize) -> Result<(), Failure> {
        let count = *self.counts.add(i);
        if count < 0 {
            return Err(Failure::arg(format!("neighbor_counts[{i}] = {count} is negative")));
        }
        if count > 0 && (*self.lists.add(i)).is_null() {
            return Err(Failure::arg(format!("'neighbors[{i}]' is NULL")));
        }
        Ok(())
    }

    /// The neighbours of a centre that passed [`NeighborArrays::check`].
    unsafe fn of<'a>(&self, i: usize) -> &'a [i32] {
        match *self.counts.add(i) as usize {
            0 => &[],
            n => std::slice::from_raw_parts(*self.lists.add(i), n),
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// An error on its way to C: status plus message.
struct Failure(pilip_status_t, String);

impl Failure {
    fn arg(msg: impl Into<String>) -> Self {
        Failure(PILIP_ERROR_INVALID_ARGUMENT, msg.into())
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure(status_of(&e), e.to_string())
    }
}

/// Runs `body` and turns its result or panic into a status code.
fn guard(function: &str, body: impl FnOnce() -> Result<(), Failure>) -> pilip_status_t {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => PILIP_SUCCESS,
        Ok(Err(Failure(code, msg))) => {
            set_last_error(&format!("{function}: {msg}"));
            code
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("{function}: internal error (a bug in pilip, please report it): {what}"));
            PILIP_ERROR_INTERNAL
        }
    }
}

fn not_null<T>(p: *const T, name: &str) -> Result<(), Failure> {
    if p.is_null() {
        Err(Failure::arg(format!("'{name}' is NULL")))
    } else {
        Ok(())
    }
}

/// A slice from a C array that must be present when `len > 0` (NULL is fine for an empty array).
unsafe fn input<'a, T>(p: *const T, len: usize, name: &str) -> Result<&'a [T], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    not_null(p, name)?;
    Ok(std::slice::from_raw_parts(p, len))
}

unsafe fn output<'a, T>(p: *mut T, len: usize) -> Option<&'a mut [T]> {
    if p.is_null() {
        None
    } else if len == 0 {
        Some(&mut [])
    } else {
        Some(std::slice::from_raw_parts_mut(p, len))
    }
}

unsafe fn model_ref<'a>(model: *const pilip_model_t) -> Result<&'a pilip_model_t, Failure> {
    not_null(model, "model")?;
    Ok(&*model)
}

static VERSION: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
    Ok(v) => v,
    Err(_) => panic!("the package version contains a NUL byte"),
};

/// The library version as "MAJOR.MINOR.PATCH" (static string, never NULL).
#[no_mangle]
pub extern "C" fn pilip_version() -> *const c_char {
    VERSION.as_ptr()
}

/// The message of the last failed call on this thread ("" if none). The string is owned by the library and
/// valid until the next failing pilip call on the same thread.
#[no_mangle]
pub extern "C" fn pilip_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Loads a pilip ONNX model from `path` and verifies it (format version, metadata, checksum, graph signature).
///
/// `options_json` may be NULL or "" for defaults, or a JSON object:
/// `{"engine": "native" | "tract" | "ort", "ort_library": "/path/libonnxruntime.so", "threads": 1}`. `engine`
/// (default "native": the networks run by pilip's own kernels, checked against the graph on load; "tract" runs any
/// valid graph; "ort" is ONNX Runtime). `threads` (default 1,
/// at most 256) is how many threads one compute call uses: the model starts that many and shares the
/// descriptor work among them (results are bit-identical to one thread); engine "ort" also uses them as
/// intra-op threads. Nothing else starts threads.
/// On success `*model` owns a new model that the caller releases with `pilip_model_free`; on failure it is
/// set to NULL.
#[no_mangle]
pub unsafe extern "C" fn pilip_model_load(
    path: *const c_char,
    options_json: *const c_char,
    model: *mut *mut pilip_model_t,
) -> pilip_status_t {
    guard("pilip_model_load", || {
        not_null(model, "model")?;
        *model = std::ptr::null_mut();
        not_null(path, "path")?;
        let path = CStr::from_ptr(path).to_str().map_err(|_| Failure::arg("'path' is not valid UTF-8"))?;
        let options = if options_json.is_null() {
            RuntimeOptions::default()
        } else {
            let s = CStr::from_ptr(options_json).to_str().map_err(|_| Failure::arg("'options_json' is not valid UTF-8"))?;
            RuntimeOptions::from_json(s)?
        };
        let potential = Potential::load(std::path::Path::new(path), &options)?;
        let mut json = serde_json::to_value(&potential.metadata).map_err(|e| Failure::arg(e.to_string()))?;
        json["engine"] = potential.engine_name().into();
        json["path"] = path.into();
        let metadata_json = CString::new(json.to_string()).map_err(|e| Failure::arg(e.to_string()))?;
        let symbols = potential.metadata.symbols.iter().map(|s| CString::new(s.as_str()).unwrap_or_default()).collect();
        *model = Box::into_raw(Box::new(pilip_model_t { potential, metadata_json, symbols, centers: Default::default() }));
        Ok(())
    })
}

/// Releases a model. `pilip_model_free(NULL)` does nothing.
#[no_mangle]
pub unsafe extern "C" fn pilip_model_free(model: *mut pilip_model_t) {
    if !model.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(Box::from_raw(model))));
    }
}

/// The model's cutoff radius (Å) in `*cutoff`.
#[no_mangle]
pub unsafe extern "C" fn pilip_model_cutoff(model: *const pilip_model_t, cutoff: *mut f64) -> pilip_status_t {
    guard("pilip_model_cutoff", || {
        let m = model_ref(model)?;
        not_null(cutoff, "cutoff")?;
        *cutoff = m.potential.cutoff();
        Ok(())
    })
}

/// The atomic numbers the model knows. `*count` receives their number; if `atomic_numbers` is not NULL, up to
/// `capacity` of them are written there (call once with NULL to size the array).
#[no_mangle]
pub unsafe extern "C" fn pilip_model_species(
    model: *const pilip_model_t,
    atomic_numbers: *mut i32,
    capacity: usize,
    count: *mut usize,
) -> pilip_status_t {
    guard("pilip_model_species", || {
        let m = model_ref(model)?;
        not_null(count, "count")?;
        let species = &m.potential.metadata.species;
        *count = species.len();
        if let Some(out) = output(atomic_numbers, capacity) {
            for (o, &z) in out.iter_mut().zip(species) {
                *o = z as i32;
            }
        }
        Ok(())
    })
}

/// The element symbol (e.g. "Cu") of the model's species number `index`, in the order of `pilip_model_species`.
/// The string is owned by the model and valid until `pilip_model_free`; `index` beyond the species count is an
/// invalid argument.
#[no_mangle]
pub unsafe extern "C" fn pilip_model_symbol(model: *const pilip_model_t, index: usize, symbol: *mut *const c_char) -> pilip_status_t {
    guard("pilip_model_symbol", || {
        let m = model_ref(model)?;
        not_null(symbol, "symbol")?;
        let s = m.symbols.get(index).ok_or_else(|| {
            Failure::arg(format!("species index {index} is out of range: the model has {} species", m.symbols.len()))
        })?;
        *symbol = s.as_ptr();
        Ok(())
    })
}

/// The model's metadata as a JSON object (format_version, library_version, species, symbols, family, cutoff,
/// units, descriptor, n_features, reference_energies, dtype, checksum, engine, path). The string is owned by the
/// model and valid until `pilip_model_free`.
#[no_mangle]
pub unsafe extern "C" fn pilip_model_metadata_json(model: *const pilip_model_t, json: *mut *const c_char) -> pilip_status_t {
    guard("pilip_model_metadata_json", || {
        let m = model_ref(model)?;
        not_null(json, "json")?;
        *json = m.metadata_json.as_ptr();
        Ok(())
    })
}

/// Energy and its derivatives for a whole system; pilip builds the neighbour list.
///
/// Inputs: `positions` `[n_atoms][3]` (Å, row-major), `atomic_numbers` `[n_atoms]`, `cell` `[3][3]` with the
/// lattice vectors as rows (Å; NULL for an open system), `pbc` `[3]` periodicity along each lattice vector (NULL =
/// open). Positions need not be wrapped into the cell.
///
/// Outputs (each may be NULL to skip it; all are overwritten): `energy` (eV), `atomic_energies` `[n_atoms]` (eV),
/// `forces` `[n_atoms][3]` (eV/Å, −∂E/∂r), `virial` `[3][3]` (eV, row-major,
/// W_ab = −Σ_pairs r_ij,a ∂E/∂r_ij,b with r_ij = x_j − x_i, i.e. Σ r⊗f as in LAMMPS; stress = −W/V).
///
/// `n_atoms = 0` is a valid empty system (energy 0).
#[no_mangle]
pub unsafe extern "C" fn pilip_model_compute(
    model: *const pilip_model_t,
    n_atoms: usize,
    positions: *const f64,
    atomic_numbers: *const i32,
    cell: *const f64,
    pbc: *const bool,
    energy: *mut f64,
    atomic_energies: *mut f64,
    forces: *mut f64,
    virial: *mut f64,
) -> pilip_status_t {
    guard("pilip_model_compute", || {
        let m = model_ref(model)?;
        let pos = input(positions, 3 * n_atoms, "positions")?;
        let numbers = input(atomic_numbers, n_atoms, "atomic_numbers")?;
        let pos: Vec<[f64; 3]> = pos.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect();
        let cell = if cell.is_null() {
            None
        } else {
            let c = std::slice::from_raw_parts(cell, 9);
            Some([[c[0], c[1], c[2]], [c[3], c[4], c[5]], [c[6], c[7], c[8]]])
        };
        let pbc = if pbc.is_null() {
            [false; 3]
        } else {
            let p = std::slice::from_raw_parts(pbc, 3);
            [p[0], p[1], p[2]]
        };
        let pred = m.potential.compute(&pos, numbers, cell.as_ref(), pbc)?;
        if !energy.is_null() {
            *energy = pred.energy;
        }
        if let Some(out) = output(atomic_energies, n_atoms) {
            out.copy_from_slice(&pred.atomic_energies);
        }
        if let Some(out) = output(forces, 3 * n_atoms) {
            out.copy_from_slice(pred.forces.as_flattened());
        }
        if let Some(out) = output(virial, 9) {
            out.copy_from_slice(pred.virial.as_flattened());
        }
        Ok(())
    })
}

/// Energy and derivatives for an MD engine's local and ghost atoms with the engine's own **full** neighbour
/// list (what a LAMMPS pair style has).
///
/// Inputs: `n_total` local + ghost atoms with `positions` `[n_total][3]` (Å; ghosts are already the periodic or
/// neighbouring-rank images) and `atomic_numbers` `[n_total]`; `n_centers` centre atoms whose energy is wanted,
/// `centers[n_centers]` their atom indices (NULL: atoms 0..n_centers-1); for each centre atom i,
/// `neighbor_counts[i]` neighbours listed in `neighbors[i][0..neighbor_counts[i])` — both indexed by **atom index**
/// like LAMMPS's `numneigh`/`firstneigh`. Neighbours beyond the cutoff are skipped, the top three bits of each
/// index (LAMMPS's special-bond flags) are ignored, and every centre must list all its neighbours (full list).
/// Atoms that are neither centres nor neighbours within the cutoff are not looked at, so they may carry any
/// atomic number (e.g. 0 for atom types the model does not handle).
///
/// Outputs (each may be NULL; every value is **added** to what the arrays hold): `energy` += Σ_centres E_i,
/// `atomic_energies[i]` += E_i for each centre, `forces` `[n_total][3]` on centres and on neighbours (ghosts
/// included: the engine reverse-communicates them), `virial` `[3][3]` as in `pilip_model_compute`, and
/// `atomic_virial` `[n_total][3][3]` with each pair term split half/half between its two atoms.
#[no_mangle]
pub unsafe extern "C" fn pilip_model_compute_neighbors(
    model: *const pilip_model_t,
    n_total: usize,
    positions: *const f64,
    atomic_numbers: *const i32,
    n_centers: usize,
    centers: *const i32,
    neighbor_counts: *const i32,
    neighbors: *const *const i32,
    energy: *mut f64,
    atomic_energies: *mut f64,
    forces: *mut f64,
    virial: *mut f64,
    atomic_virial: *mut f64,
) -> pilip_status_t {
    guard("pilip_model_compute_neighbors", || {
        let m = model_ref(model)?;
        let pos = input(positions, 3 * n_total, "positions")?;
        let numbers = input(atomic_numbers, n_total, "atomic_numbers")?;
        let pos: &[[f64; 3]] = pos.as_chunks::<3>().0;
        let mut reused = m.centers.try_lock().ok();
        let mut own = Vec::new();
        let center_list: &mut Vec<usize> = reused.as_deref_mut().unwrap_or(&mut own);
        center_list.clear();
        if centers.is_null() {
            center_list.extend(0..n_centers);
        } else {
            for &i in input(centers, n_centers, "centers")? {
                center_list.push(usize::try_from(i).map_err(|_| Failure::arg(format!("centre index {i} is negative")))?);
            }
        }
        if let Some(&i) = center_list.iter().find(|&&i| i >= n_total) {
            return Err(Failure::arg(format!("centre atom {i} is not below n_total = {n_total}")));
        }
        if n_centers > 0 {
            not_null(neighbor_counts, "neighbor_counts")?;
            not_null(neighbors, "neighbors")?;
        }
        let arrays = NeighborArrays { counts: neighbor_counts, lists: neighbors };
        for &i in center_list.iter() {
            arrays.check(i)?;
        }
        // SAFETY: the runtime asks for the lists of centres only, each checked above.
        let lookup = |i: usize| unsafe { arrays.of(i) };
        let system = LocalSystem { positions: pos, numbers, centers: center_list, neighbors: &lookup };
        let out = LocalOutputs {
            energy: energy.as_mut(),
            atomic_energies: output(atomic_energies, n_total),
            forces: output(forces, 3 * n_total).map(|f| f.as_chunks_mut::<3>().0),
            virial: output(virial, 9).map(|v| &mut *(v.as_mut_ptr() as *mut [[f64; 3]; 3])),
            atomic_virial: output(atomic_virial, 9 * n_total).map(|v| v.as_chunks_mut::<9>().0),
        };
        m.potential.compute_local(&system, out)?;
        Ok(())
    })
}

/// Test-only (exported from the library, kept out of `pilip.h`): panics inside the library on purpose and
/// returns the resulting status (always `PILIP_ERROR_INTERNAL`), so tests can check that a panic never crosses
/// the C ABI.
#[no_mangle]
pub extern "C" fn pilip_debug_panic() -> pilip_status_t {
    guard("pilip_debug_panic", || panic!("deliberate panic requested by pilip_debug_panic"))
}

"""Finds, loads and declares libpilip (the C API of include/pilip.h) through ctypes.

Search order: the file named by the environment variable PILIP_LIBRARY_PATH, the library built into this
package (setup.py: `libpilip.abi3.so`; any `libpilip*.so` here, e.g. an older `libpilip.so`), then target/release
and target/debug of the source checkout this file lives in. The library's version must equal the package's.
"""
import ctypes
import os
import pathlib

from ._version import __version__

_LIB = None

c_double_p = ctypes.POINTER(ctypes.c_double)
c_int32_p = ctypes.POINTER(ctypes.c_int32)
c_size_t_p = ctypes.POINTER(ctypes.c_size_t)

# name: (restype, argtypes) — kept equal to include/pilip.h by tests/python/test_python.py
FUNCTIONS = {
    "pilip_version": (ctypes.c_char_p, []),
    "pilip_last_error": (ctypes.c_char_p, []),
    "pilip_model_load": (ctypes.c_int32, [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]),
    "pilip_model_free": (None, [ctypes.c_void_p]),
    "pilip_model_cutoff": (ctypes.c_int32, [ctypes.c_void_p, c_double_p]),
    "pilip_model_species": (ctypes.c_int32, [ctypes.c_void_p, c_int32_p, ctypes.c_size_t, c_size_t_p]),
    "pilip_model_metadata_json": (ctypes.c_int32, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p)]),
    "pilip_model_compute": (
        ctypes.c_int32,
        [ctypes.c_void_p, ctypes.c_size_t, c_double_p, c_int32_p, c_double_p, ctypes.POINTER(ctypes.c_bool),
         c_double_p, c_double_p, c_double_p, c_double_p],
    ),
    "pilip_model_compute_neighbors": (
        ctypes.c_int32,
        [ctypes.c_void_p, ctypes.c_size_t, c_double_p, c_int32_p, ctypes.c_size_t, c_int32_p, c_int32_p,
         ctypes.POINTER(c_int32_p), c_double_p, c_double_p, c_double_p, c_double_p, c_double_p],
    ),
    "pilip_model_symbol": (ctypes.c_int32, [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_char_p)]),
}

# pilip_status_t values — kept equal to the PILIP_* defines of include/pilip.h by tests/python/test_python.py
SUCCESS = 0
ERROR_INVALID_ARGUMENT = 1
ERROR_IO = 2
ERROR_MODEL = 3
ERROR_ENGINE = 4
ERROR_INTERNAL = 255

STATUS = {
    SUCCESS: "success",
    ERROR_INVALID_ARGUMENT: "invalid argument",
    ERROR_IO: "I/O error",
    ERROR_MODEL: "invalid model",
    ERROR_ENGINE: "engine unavailable or failed",
    ERROR_INTERNAL: "internal error",
}


BUNDLED = "libpilip.abi3.so"  # the file setup.py puts into the package


def candidate_paths():
    paths = []
    env = os.environ.get("PILIP_LIBRARY_PATH")
    if env:
        paths.append(pathlib.Path(env))
    here = pathlib.Path(__file__).resolve().parent
    # setuptools-rust names the file after the extension: libpilip.abi3.so (a platform tag may be added by other
    # settings, e.g. libpilip.cpython-311-x86_64-linux-gnu.so); the name it should have comes first.
    bundled = sorted(here.glob("libpilip*.so"), key=lambda p: (p.name != BUNDLED, p.name))
    paths += bundled or [here / BUNDLED]
    for parent in here.parents:
        if (parent / "Cargo.toml").is_file():
            paths += [parent / "target" / p / "libpilip.so" for p in ("release", "debug")]
            break
    return paths


def lib():
    """The loaded library (cached)."""
    global _LIB
    if _LIB is not None:
        return _LIB
    tried = []
    for path in candidate_paths():
        if not path.is_file():
            tried.append(f"{path} (not found)")
            continue
        try:
            handle = ctypes.CDLL(str(path))
        except OSError as e:
            tried.append(f"{path} ({e})")
            continue
        missing = [name for name in FUNCTIONS if not hasattr(handle, name)]
        if missing:
            tried.append(f"{path} (lacks {', '.join(missing)}: built from other sources than this package)")
            continue
        for name, (restype, argtypes) in FUNCTIONS.items():
            fn = getattr(handle, name)
            fn.restype = restype
            fn.argtypes = argtypes
        version = handle.pilip_version().decode()
        if version != __version__:
            tried.append(f"{path} (library version {version}, this package is {__version__})")
            continue
        _LIB = handle
        return _LIB
    raise ImportError("could not load libpilip; tried:\n  " + "\n  ".join(tried) +
                      "\ninstall the package from a checkout with `pip install ./bindings/python` (it builds "
                      "libpilip with cargo), run `cargo build --release` in the checkout, or set PILIP_LIBRARY_PATH "
                      "to libpilip.so")

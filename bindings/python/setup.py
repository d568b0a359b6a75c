"""Builds libpilip from the Rust crate two folders up (../../Cargo.toml) with cargo, through setuptools-rust, and
puts it inside the package as pilip/libpilip.abi3.so, which pilip/_c_lib.py loads with ctypes. So
`pip install ./bindings/python` and `pip wheel ./bindings/python` need only a Rust toolchain (cargo on PATH);
setuptools-rust itself comes from PyPI through pip's build isolation.

- Features: `ort`, as scripts/test.sh builds it: `pilip.Model(..., engine="ort", ort_library=...)` works (ONNX
  Runtime is opened at run time, never linked), and the build shares target/ with `cargo test --release
  --features ort`, so after it only the pilip crate is relinked.
- Target folder: CARGO_TARGET_DIR if set, else the repository's target/ (cargo's default for that manifest).
- Wheel tag py3-none-<platform>: libpilip is a plain C library loaded by ctypes, not a Python extension module,
  so one wheel serves every Python 3 on its platform; the `.abi3.so` name keeps the file name free of a Python
  version too.
"""
import os

from setuptools import setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools_rust import Binding, RustExtension

HERE = os.path.dirname(os.path.abspath(__file__))
MANIFEST = os.path.normpath(os.path.join(HERE, "..", "..", "Cargo.toml"))

if not os.path.isfile(MANIFEST):
    raise SystemExit(
        f"pilip: {MANIFEST} not found. The Python package builds libpilip from the Rust sources of the pilip "
        "repository it sits in: install from a checkout (`pip install ./bindings/python`), not from a copy of "
        "bindings/python alone."
    )


class bdist_wheel_any_python(bdist_wheel):
    """Platform wheel for any Python 3 (py3-none-linux_x86_64, ...): the library does not use the Python C API."""

    def get_tag(self):
        _python, _abi, platform = super().get_tag()
        return "py3", "none", platform


setup(
    rust_extensions=[
        RustExtension(
            "pilip.libpilip",
            path=MANIFEST,
            binding=Binding.NoBinding,
            py_limited_api=True,  # file name libpilip.abi3.so, not libpilip.cpython-311-x86_64-linux-gnu.so
            features=["ort"],
            # --locked: the committed Cargo.lock, never rewritten by an install. The crate types are Cargo.toml's
            # (setuptools-rust would otherwise ask for the cdylib alone), so `cargo rustc` here and `cargo build`
            # / `cargo test` share one fingerprint and do not rebuild the crate for each other.
            args=["--locked", "--crate-type", "rlib", "--crate-type", "cdylib", "--crate-type", "staticlib"],
            debug=False,  # release build also for editable installs
        )
    ],
    cmdclass={"bdist_wheel": bdist_wheel_any_python},
    zip_safe=False,
)

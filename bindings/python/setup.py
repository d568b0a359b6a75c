"""Copies libpilip.so into the package when it is built from a source checkout (after `cargo build --release`),
so `pip install ./bindings/python` gives a self-contained package. Without it, the package finds the library
through PILIP_LIBRARY_PATH or the checkout's target/ folder at import time."""
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildWithLibrary(build_py):
    def run(self):
        super().run()
        candidates = [os.environ.get("PILIP_LIBRARY_PATH", "")] + [
            os.path.join(HERE, "..", "..", "target", profile, "libpilip.so") for profile in ("release", "debug")
        ]
        for lib in candidates:
            if lib and os.path.isfile(lib):
                target = os.path.join(self.build_lib, "pilip", "libpilip.so")
                shutil.copyfile(lib, target)
                print(f"pilip: bundled {os.path.realpath(lib)}")
                break
        else:
            print("pilip: no libpilip.so found to bundle; set PILIP_LIBRARY_PATH at run time")


setup(cmdclass={"build_py": BuildWithLibrary})

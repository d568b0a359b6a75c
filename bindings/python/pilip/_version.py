# The package version (pyproject.toml reads it); tests/python/test_python.py keeps it equal to Cargo.toml's.
__version__ = "0.1.0"

"""GPU tests: a package, so that its conftest never shadows tests/conftest.py (both are imported by name)."""

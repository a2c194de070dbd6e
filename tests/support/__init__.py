"""Helpers that tests and benchmarks share (tiny SAM 3 checkpoints, codec fidelity, the
onnxruntime click decoder). Not shipped: imported as `tests.support.*` from the repository
root (pytest's conftest puts it on sys.path; benchmarks run as `python -m bench.<name>`)."""

"""Helpers that several test files share, some imported by benchmarks too (tiny SAM 3
checkpoints, codec fidelity, the onnxruntime click decoder, the fake SAM 3D model, compact-frame
checks). Not shipped: imported as `tests.support.*` from the repository root (pytest's conftest
puts it on sys.path; benchmarks run as `python -m bench.<name>`)."""

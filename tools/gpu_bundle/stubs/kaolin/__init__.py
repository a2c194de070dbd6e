"""Stand-in for NVIDIA kaolin (PyPI's `kaolin` is a placeholder; NVIDIA's wheels are on its own
index). FlexiCubes, the mesh decoder's extractor, imports only
`kaolin.utils.testing.check_tensor`, which is real here (kaolin/utils/testing.py)."""

"""Stand-in for NVIDIA kaolin in the GPU image: SAM 3D Objects imports only
`kaolin.utils.testing.check_tensor` (FlexiCubes' argument checks). See cluster/README.md."""

"""sam3d-serve: a Ray Serve graph that streams a 3D object taking shape."""

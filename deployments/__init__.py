"""One package per deployment of the graph; each owns plain-Python backends."""

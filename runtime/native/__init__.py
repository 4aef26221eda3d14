"""Hand-written CPU kernels (C compiled by tinygrad's own compiler, run inside its graphs) and the threaded runner."""

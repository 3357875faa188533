"""GPU acceptance checks and figures; they need a CUDA machine."""

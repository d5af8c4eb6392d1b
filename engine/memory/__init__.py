"""Memory: guarding against out-of-memory, the low/medium-VRAM modes and offloading, the VAE's memory budget, and the CUDA fast path (compiled models)."""

"""Torch custom ops over the compiled kernels, and the pure-PyTorch reference (the oracle)."""

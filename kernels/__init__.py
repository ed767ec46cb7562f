"""Fused counting kernels (shipped as lna.kernels)."""

"""Layer 1, steps: what a step is (``Schedule``), the precision registry, the fp8-attention probe beside it, a
step's cancel check and replay store. Imports only the shared modules (``tmpdiff.errors``, ``limits``, ``atomic``)."""

"""Layer 5, memory: where a model's bytes live under a GPU budget (the placement plan, the placer that carries it
out, blocks streamed from host memory, the prompt cache, the budget and the meter of peaks). Imports pipelines,
switching, variants, steps and the shared modules."""

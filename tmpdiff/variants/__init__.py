"""Layer 2, variants: each precision's copy of a denoiser (the bank, built once, kept resident; compiled and AoT
code; CUDA graphs; copies that share tensors and the blocks they repeat). Imports steps and the shared modules; it
reaches where its bytes live through the ``BankHome`` protocol, never the memory package."""

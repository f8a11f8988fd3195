"""Layer 6, engine: one image from one setting (``RunSettings``, ``Engine``, fair turns, timing). Imports memory and
every layer before it."""

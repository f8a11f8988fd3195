"""Layer 4, pipelines: the models (registry, tiny and random-weight models, context parallelism). Imports
switching, variants, steps and the shared modules."""

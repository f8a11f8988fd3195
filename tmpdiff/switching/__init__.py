"""Layer 3, switching: a precision per step inside a stock diffusers pipeline (``apply_schedule``: the hook on the
pipeline, and the router that gives a block its step clock, replay and timer). Imports variants, steps and the shared
modules."""

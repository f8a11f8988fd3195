"""Layer 9, studies: what front ends ask for (``Study``: compare, search, sweep, blind test). Imports measure and
every layer before it but the store (layer 8, ``tmpdiff.cache``), which it meets through ``EvaluationStore``."""

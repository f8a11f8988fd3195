"""Layer 7, measure: scores, the cost model and its tables, records, the ``Evaluator``. Imports engine and every
layer before it."""

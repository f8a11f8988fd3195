"""A schedule's image beside its setting's reference: what ``tmpdiff generate`` prints and the app shows.

``Study.compare`` makes it (one engine call for every front end); front ends render it and never rebuild it. Its
derived views (the difference map, the speed-up, a prediction on another device) are computed here, from the
measured arrays and tables, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from tmpdiff.engine.settings import RunSettings
from tmpdiff.measure.cost_tables import Prediction, target_prediction
from tmpdiff.measure.evaluator import Evaluation
from tmpdiff.measure.latency import CostTable
from tmpdiff.measure.metrics import difference_map
from tmpdiff.steps.schedule import Schedule

__all__ = ["Comparison", "CostPolicy"]


@dataclass(frozen=True)
class CostPolicy:
    """Where a comparison's predicted seconds come from: a cost table measured earlier on this device for this
    setting (stored by a search, or measured by one in this process), and one given for another device. A
    comparison never spends runs measuring costs."""

    here: CostTable | None = None
    given: CostTable | None = None

    @property
    def source(self) -> str:
        return "given" if self.given is not None else "stored" if self.here is not None else "none"


@dataclass(frozen=True)
class Comparison:
    """One schedule evaluated beside its setting's reference.

    Attributes:
        settings: what the two images were made with.
        schedule: the schedule asked for (the reference schedule compares the reference with itself).
        reference: the setting's all-reference-precision evaluation.
        evaluation: the schedule's evaluation (the reference itself for the reference schedule).
        difference: |reference - schedule| per pixel, mean over colour channels, as a heat map (PNG-ready).
        largest_difference: the largest such difference (0-255): what the heat map's brightest colour means.
        costs: where the prediction came from.
        split: over how many processes each image was split (1: one).
    """

    settings: RunSettings
    schedule: Schedule
    reference: Evaluation
    evaluation: Evaluation
    difference: Image.Image
    largest_difference: int
    costs: CostPolicy
    split: int = 1

    @classmethod
    def of(cls, settings: RunSettings, schedule: Schedule, reference: Evaluation, evaluation: Evaluation,
           costs: CostPolicy, split: int = 1) -> Comparison:
        """The comparison of two evaluations, its difference map computed from the engine's own pixels."""
        image, base = np.asarray(evaluation.image, np.int16), np.asarray(reference.image, np.int16)
        largest = int(np.abs(image - base).mean(-1).max())
        return cls(settings, schedule, reference, evaluation, difference_map(evaluation.image, reference.image),
                   largest, costs, split)

    @property
    def is_video(self) -> bool:
        return bool(self.settings.spec.frames)

    @property
    def predicted_here(self) -> Prediction | None:
        """The schedule's speed-up predicted from the step costs measured on this device (None: none measured yet
        for this setting, a precision without a measured cost, or simulated precisions, which make no claim)."""
        table = self.costs.here
        if table is None or not table.has_speed_claim(self.schedule) or self.evaluation.record.simulated:
            return None
        try:
            return target_prediction(table, self.settings.reference_schedule(), self.schedule)
        except ValueError:  # a precision whose cost was never measured
            return None

    def predicted_on(self, table: CostTable) -> Prediction:
        """The schedule's seconds and speed-up predicted on ``table``'s device (a shipped or given table)."""
        return target_prediction(table, self.settings.reference_schedule(), self.schedule)

    def summary(self) -> dict[str, Any]:
        """What ``generate`` prints and the app's metrics show: the schedule's evaluation, where its image came
        from, and how it was made."""
        line = {"prompt": self.settings.resolved_prompt, "seed": self.settings.seed, **self.evaluation.summary()}
        if self.split > 1:
            line["split_over_processes"] = self.split
        if self.evaluation.record.simulated:
            line["note"] = f"simulated precisions ({', '.join(self.evaluation.record.simulated)}): no speed claim"
        line["costs"] = "measured earlier on this device" if self.costs.here is not None else "none measured yet"
        predicted = self.predicted_here  # beside the measured "speedup": each figure says which it is
        line["predicted_speedup"] = None if predicted is None else round(predicted.speedup, 3)
        if self.costs.given is not None:
            line["predicted_on"] = self.predicted_on(self.costs.given).to_dict()
        return line

"""What every panel of the app reads: the one study (engine, evaluator, cache), the default model, the opening
search, and who may queue work now."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tmpdiff.engine.turns import TurnLock
from tmpdiff.measure.evaluator import Evaluator
from tmpdiff.pipelines.registry import ModelSpec
from tmpdiff.studies.blind import BlindBook
from tmpdiff.studies.study import SearchResult, Study

from .admission import Admission

__all__ = ["AppState"]


@dataclass
class AppState:
    study: Study
    spec: ModelSpec  # the model the page opens on
    story: SearchResult | None = None  # the opening search, computed once
    admission: Admission = field(default_factory=Admission)  # jobs per session and in all (admission.py)
    # Images run whole, one after another in the order asked: interleaving two images' pipeline calls would make
    # each wait for both (searches still take turns call by call, and let a waiting image go first).
    image_turns: TurnLock = field(default_factory=TurnLock)
    search_turns: TurnLock = field(default_factory=TurnLock)  # one search runs; the others admitted wait in turn
    blind: BlindBook = field(default_factory=BlindBook)  # the blind test's pairs shown and not yet answered

    @property
    def evaluator(self) -> Evaluator:
        return self.study.evaluator

    @property
    def store(self) -> Any | None:
        """The cache store (history, blind answers), or None with ``--no-cache``."""
        return self.study.log

    @property
    def device(self) -> str:
        return self.study.evaluator.engine.device

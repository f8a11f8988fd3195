"""A blind test for people who decide: a schedule's image and its reference in random order, "which is full
precision?", and the answers tallied per schedule beside SSIM and LPIPS.

The pairs come from the cache (stored images only: nothing is computed), each with the reference made on the same
device; the answers go to the cache, so a test run by many people on a shared cache adds up.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tmpdiff.engine.settings import RunSettings
from tmpdiff.errors import FieldError
from tmpdiff.measure.evaluator import Evaluator
from tmpdiff.measure.records import BlindTally, StoredEvaluation

__all__ = ["ANSWERS", "BlindPair", "BlindStore", "BlindTally", "next_pair", "record_answer", "tallies"]

ANSWERS = ("first", "second", "unsure")  # which of the two shown images the person called full precision


@dataclass(frozen=True)
class BlindPair:
    """Two stored images of one setting shown side by side: a schedule's and its reference's, in random order."""

    evaluation_id: int
    schedule: str
    reference_first: bool
    first_png: bytes
    second_png: bytes


class BlindStore(Protocol):
    """What the blind test needs of the cache (``tmpdiff.cache.Cache``)."""

    def evaluations(self, model: str | None = None, settings_hash: str | None = None,
                    device_hash: str | None = None) -> list[StoredEvaluation]: ...

    def image(self, sha256: str) -> bytes | None: ...

    def record_blind_answer(self, evaluation_id: int, answer: str) -> None: ...

    def blind_tallies(self, evaluation_ids: Sequence[int]) -> list[BlindTally]: ...


def _candidates(evaluator: Evaluator, store: BlindStore, settings: RunSettings
                ) -> list[tuple[StoredEvaluation, StoredEvaluation]]:
    """Each stored schedule of ``settings`` but the reference, with the reference stored for the same device."""
    key = evaluator.key(settings, settings.reference_schedule())
    rows = store.evaluations(model=settings.model, settings_hash=key.settings_hash)
    references = {row.device_hash: row for row in rows if row.schedule_hash == key.schedule_hash}
    return [(row, references[row.device_hash]) for row in rows
            if row.schedule_hash != key.schedule_hash and row.device_hash in references
            and row.image_sha256 != references[row.device_hash].image_sha256]  # an identical pair asks nothing


def next_pair(evaluator: Evaluator, store: BlindStore, settings: RunSettings,
              rng: random.Random | None = None) -> BlindPair | None:
    """A pair to show: among the stored schedules of ``settings`` the one answered least so far (ties at random),
    in random order; None when the cache holds no schedule of this setting beside its reference."""
    rng = rng or random.SystemRandom()
    candidates = _candidates(evaluator, store, settings)
    if not candidates:
        return None
    answered = {t.evaluation_id: t.answers for t in store.blind_tallies([row.id for row, _ in candidates])}
    fewest = min(answered.get(row.id, 0) for row, _ in candidates)
    row, reference = rng.choice([pair for pair in candidates if answered.get(pair[0].id, 0) == fewest])
    image, base = store.image(row.image_sha256), store.image(reference.image_sha256)
    if image is None or base is None:
        return None
    reference_first = rng.random() < 0.5
    first, second = (base, image) if reference_first else (image, base)
    return BlindPair(row.id, row.schedule, reference_first, first, second)


def record_answer(store: BlindStore, pair: BlindPair, answer: str) -> str:
    """Keeps one person's answer (``first``/``second``: the image they called full precision; ``unsure``) and says
    whether it was ``right``, ``wrong`` or ``unsure``."""
    if answer not in ANSWERS:
        raise FieldError("answer", answer,
                         f"the blind test's {{answer}} is one of {', '.join(ANSWERS)}, got {{value}}")
    verdict = "unsure" if answer == "unsure" else "right" if (answer == "first") == pair.reference_first else "wrong"
    store.record_blind_answer(pair.evaluation_id, verdict)
    return verdict


def tallies(evaluator: Evaluator, store: BlindStore, settings: RunSettings) -> list[BlindTally]:
    """The answers of every stored schedule of ``settings`` that has any, most answered first."""
    ids = [row.id for row, _ in _candidates(evaluator, store, settings)]
    return sorted(store.blind_tallies(ids), key=lambda t: -t.answers)

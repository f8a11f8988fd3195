"""A blind test for people who decide: a schedule's image and its reference in random order, "which is full
precision?", and the answers tallied per schedule beside SSIM and LPIPS.

The pairs come from the cache (stored images only: nothing is computed), each with the reference made on the same
device; the answers go to the cache, so a test run by many people on a shared cache adds up. A pair is answered
once: the page answers by the pair's random token, which :class:`BlindBook` takes once, for the session it was
shown to, within a per-session rate; which image is the reference stays on the server until then.
"""

from __future__ import annotations

import hashlib
import random
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from tmpdiff.engine.settings import RunSettings
from tmpdiff.errors import FieldError
from tmpdiff.measure.evaluator import Evaluator
from tmpdiff.measure.records import BlindTally, StoredEvaluation

__all__ = ["ANSWERS", "BlindBook", "BlindPair", "BlindSetting", "BlindStore", "BlindTally", "blind_settings",
           "check_answer", "next_pair", "record_answer", "tallies", "verdict_of"]

ANSWERS = ("first", "second", "unsure")  # which of the two shown images the person called full precision
ANSWERS_PER_MINUTE = 30  # a session's bound: a person looks at each pair for seconds, a script would not


@dataclass(frozen=True)
class BlindPair:
    """Two stored images of one setting shown side by side: a schedule's and its reference's, in random order.
    ``token`` (random) is all the page holds of it."""

    evaluation_id: int
    schedule: str
    reference_first: bool
    first_png: bytes
    second_png: bytes
    token: str = ""


@dataclass(frozen=True)
class BlindSetting:
    """A setting with pairs to show: the settings, and how many of its stored schedules can be paired."""

    settings: RunSettings
    settings_hash: str
    schedules: int

    @property
    def label(self) -> str:
        s = self.settings
        return (f"{s.resolved_prompt} · seed {s.seed} · {s.resolved_steps} steps · {s.resolved_size}px · guidance "
                f"{s.resolved_guidance:g} ({self.schedules} schedule{'s' if self.schedules != 1 else ''})")


class BlindStore(Protocol):
    """What the blind test needs of the cache (``tmpdiff.cache.Cache``)."""

    def evaluations(self, model: str | None = None, settings_hash: str | None = None,
                    device_hash: str | None = None) -> list[StoredEvaluation]: ...

    def image(self, sha256: str) -> bytes | None: ...

    def record_blind_answer(self, evaluation_id: int, answer: str, session: str | None = None) -> None: ...

    def blind_tallies(self, evaluation_ids: Sequence[int]) -> list[BlindTally]: ...


def _pairs_in(rows: Sequence[StoredEvaluation], reference_hash: str
              ) -> list[tuple[StoredEvaluation, StoredEvaluation]]:
    """Each stored schedule of one setting but the reference, with the reference stored for the same device."""
    references = {row.device_hash: row for row in rows if row.schedule_hash == reference_hash}
    return [(row, references[row.device_hash]) for row in rows
            if row.schedule_hash != reference_hash and row.device_hash in references
            and row.image_sha256 != references[row.device_hash].image_sha256]  # an identical pair asks nothing


def _candidates(evaluator: Evaluator, store: BlindStore, settings: RunSettings
                ) -> list[tuple[StoredEvaluation, StoredEvaluation]]:
    key = evaluator.key(settings, settings.reference_schedule())
    return _pairs_in(store.evaluations(model=settings.model, settings_hash=key.settings_hash), key.schedule_hash)


def blind_settings(evaluator: Evaluator, store: BlindStore, model: str) -> list[BlindSetting]:
    """Every setting of ``model`` in the cache with at least one pair to show, most pairs first."""
    groups: dict[str, list[StoredEvaluation]] = {}
    for row in store.evaluations(model=model):
        groups.setdefault(row.settings_hash, []).append(row)
    found = []
    for settings_hash, rows in groups.items():
        try:
            settings = RunSettings.of_stored(rows[0].settings)
        except ValueError:  # a setting this tmpdiff no longer accepts: nothing to show of it
            continue
        pairs = _pairs_in(rows, settings.reference_schedule().hash)
        if pairs:
            found.append(BlindSetting(settings, settings_hash, len({row.schedule_hash for row, _ in pairs})))
    return sorted(found, key=lambda s: (-s.schedules, s.label))


def next_pair(evaluator: Evaluator, store: BlindStore, settings: RunSettings,
              rng: random.Random | None = None) -> BlindPair | None:
    """A pair to show: among the stored schedules of ``settings`` the one answered least so far (ties at random),
    in random order, with a fresh token; None when the cache holds no schedule of this setting beside its
    reference."""
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
    return BlindPair(row.id, row.schedule, reference_first, first, second, secrets.token_urlsafe(16))


def check_answer(answer: str) -> str:
    """``answer`` if it is one of ``ANSWERS``; a ``FieldError`` otherwise."""
    if answer not in ANSWERS:
        raise FieldError("answer", answer,
                         f"the blind test's {{answer}} is one of {', '.join(ANSWERS)}, got {{value}}")
    return answer


def verdict_of(pair: BlindPair, answer: str) -> str:
    """``right``, ``wrong`` or ``unsure`` for ``answer`` (``first``/``second``: the image called full precision)."""
    check_answer(answer)
    return "unsure" if answer == "unsure" else "right" if (answer == "first") == pair.reference_first else "wrong"


def record_answer(store: BlindStore, pair: BlindPair, answer: str, session: str | None = None) -> str:
    """Keeps one person's answer and says whether it was ``right``, ``wrong`` or ``unsure``. ``session``: who
    answered, as :meth:`BlindBook.session_tag` words it (never the session id itself)."""
    verdict = verdict_of(pair, answer)
    store.record_blind_answer(pair.evaluation_id, verdict, session)
    return verdict


def tallies(evaluator: Evaluator, store: BlindStore, settings: RunSettings) -> list[BlindTally]:
    """The answers of every stored schedule of ``settings`` that has any, most answered first."""
    ids = [row.id for row, _ in _candidates(evaluator, store, settings)]
    return sorted(store.blind_tallies(ids), key=lambda t: -t.answers)


class BlindBook:
    """The pairs shown and not yet answered, by token. An answer is taken once, only for a pair shown to the
    session answering, and at most ``per_minute`` a session; a refused answer stores nothing. At most
    ``outstanding`` pairs and as many sessions' recent answers are kept, the least recent going first."""

    def __init__(self, per_minute: int = ANSWERS_PER_MINUTE, outstanding: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute, self.outstanding, self.clock = per_minute, outstanding, clock
        self._shown: OrderedDict[str, tuple[str | None, BlindPair]] = OrderedDict()
        self._answered: OrderedDict[str | None, deque[float]] = OrderedDict()  # by session, least recent first
        self._salt = secrets.token_bytes(16)
        self._lock = threading.Lock()

    def show(self, pair: BlindPair, session: str | None) -> None:
        """Remembers ``pair`` as shown to ``session`` (the oldest unanswered ones go past ``outstanding``)."""
        with self._lock:
            self._shown[pair.token] = (session, pair)
            while len(self._shown) > self.outstanding:
                self._shown.popitem(last=False)

    def take(self, token: str | None, session: str | None) -> BlindPair:
        """The pair shown under ``token`` to ``session``, forgotten as it is taken; a ``FieldError`` for a token
        answered already, never shown (to this session), or an answer over the session's rate."""
        with self._lock:
            shown = self._shown.get(token or "")
            if shown is None or shown[0] != session:
                raise FieldError("answer", token, "this pair was answered already (or never shown here): answer the "
                                 "pair on screen, or show the next one")
            times = self._answered.setdefault(session, deque())
            self._answered.move_to_end(session)
            while len(self._answered) > self.outstanding:  # sessions long gone: their bound has lapsed anyway
                self._answered.popitem(last=False)
            now = self.clock()
            while times and now - times[0] > 60.0:
                times.popleft()
            if len(times) >= self.per_minute:
                raise FieldError("answer", len(times), f"at most {self.per_minute} answers a minute: look at the "
                                 "next pair a little longer")
            times.append(now)
            del self._shown[token or ""]
            return shown[1]

    def session_tag(self, session: str | None) -> str | None:
        """``session`` as the cache keeps it: a salted hash (this process's salt), so answers can be counted by
        session without storing who answered."""
        if session is None:
            return None
        return hashlib.sha256(self._salt + session.encode()).hexdigest()[:32]

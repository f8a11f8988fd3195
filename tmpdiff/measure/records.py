"""What an evaluation is, independent of where it is stored.

The engine defines the key and the record; ``cache/`` stores them in SQLite. The store is a
protocol so the engine never imports a database library.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from tmpdiff.memory.meter import MemoryFigures, gib

__all__ = ["BlindTally", "EvalKey", "EvalRecord", "EvaluationStore", "StoredEvaluation", "StoredSearchRun",
           "device_fingerprint", "stable_hash"]


def stable_hash(data: Any) -> str:
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def device_fingerprint(device: str, mode: str, split: int = 1, budget: int | None = None) -> dict[str, Any]:
    """What decides numerics and speed on this machine (``mode``: eager, compiled or aot; ``split``: over how
    many GPUs each image is split, so that a split image's seconds never answer for one GPU's; ``budget``: a GPU
    memory budget the user gave, under which blocks may stream and run eager, so its images and seconds never
    answer for an unbudgeted run's)."""
    import diffusers
    import torch
    import torchao

    kind = torch.device(device).type
    name = torch.cuda.get_device_name(device) if kind == "cuda" else f"cpu-{platform.machine()}"
    return {"device": name, "torch": torch.__version__, "torchao": torchao.__version__,
            "diffusers": diffusers.__version__, "compiled": mode != "eager",
            **({"mode": str(mode)} if mode == "aot" else {}), **({"split_over": split} if split > 1 else {}),
            **({"budget_gib": gib(budget)} if budget is not None else {})}


@dataclass(frozen=True)
class EvalKey:
    model: str
    model_hash: str
    settings: dict[str, Any]
    schedule: str
    schedule_hash: str
    device: dict[str, Any]

    @property
    def settings_hash(self) -> str:
        return stable_hash(self.settings)

    @property
    def device_hash(self) -> str:
        return stable_hash(self.device)

    @property
    def setting_hash(self) -> str:
        """Everything but the schedule: the model, its settings and the device (what prefix replay keys on)."""
        return stable_hash([self.model_hash, self.settings_hash, self.device_hash])

    @property
    def digest(self) -> str:
        return stable_hash([self.model, self.model_hash, self.settings_hash, self.schedule_hash, self.device_hash])


@dataclass
class EvalRecord:
    key: EvalKey
    png: bytes
    ssim: float | None
    psnr: float | None
    lpips: float | None
    lpips_note: str
    measured_seconds: float
    predicted_seconds: float | None
    steps_run: list[str] = field(default_factory=list)
    simulated: list[str] = field(default_factory=list)
    peak_bytes: int | None = None  # the image's peak memory (GPU; the host's without one): memory.py
    memory: MemoryFigures | None = None  # where it was measured, the plan, the budget (JSON only in the store)
    # The reference's seconds timed beside this image (same process, just before it): the measured speed-up's
    # denominator. None for a reference, an image stored before it was kept, or one timed alone.
    reference_seconds: float | None = None

    def metrics(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("png")
        data.pop("key")
        data["memory"] = self.memory.to_dict() if self.memory else None
        return data


@dataclass(frozen=True)
class StoredEvaluation:
    """One row of the evaluation cache, as the store hands it back (without its image: ``image_sha256`` names it)."""

    id: int
    model: str
    model_hash: str
    settings: dict[str, Any]
    settings_hash: str
    schedule: str
    schedule_hash: str
    device: dict[str, Any]
    device_hash: str
    image_sha256: str
    ssim: float | None
    psnr: float | None  # None: identical to its reference (infinite PSNR)
    lpips: float | None
    lpips_note: str
    measured_seconds: float
    predicted_seconds: float | None
    steps_run: list[str]
    simulated: list[str]
    created_at: str  # ISO 8601
    peak_bytes: int | None = None  # None: stored before memory was measured
    memory: MemoryFigures | None = None
    reference_seconds: float | None = None  # timed beside it (``EvalRecord.reference_seconds``)

    @property
    def prompt(self) -> str | None:
        return self.settings.get("prompt")

    @property
    def seed(self) -> int | None:
        return self.settings.get("seed")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "memory": self.memory.to_dict() if self.memory else None}


@dataclass(frozen=True)
class StoredSearchRun:
    """A search or sweep as the store logged it: what was asked, what it found (or why it stopped)."""

    id: int
    model: str
    request: dict[str, Any]
    result: dict[str, Any] | None
    evaluations: int  # linked to the run
    finished: bool


@dataclass(frozen=True)
class BlindTally:
    """The answers given so far for one stored evaluation, beside its scores."""

    evaluation_id: int
    schedule: str
    prompt: str | None
    seed: int | None
    ssim: float | None
    lpips: float | None
    right: int
    wrong: int
    unsure: int
    sessions: int = 0  # how many browser sessions gave these answers (answers stored before: not counted)

    @property
    def answers(self) -> int:
        return self.right + self.wrong + self.unsure

    @property
    def right_share(self) -> float | None:
        """Of the answers that chose an image, the share that found the reference (0.5: no better than a coin)."""
        chosen = self.right + self.wrong
        return self.right / chosen if chosen else None


class EvaluationStore(Protocol):
    """Where evaluations live (``cache.Cache`` implements it)."""

    def get(self, key: EvalKey) -> EvalRecord | None: ...

    def put(self, record: EvalRecord) -> object: ...  # the cache answers the row's id; the engine needs none

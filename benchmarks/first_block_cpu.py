"""Would a first-block-cache step beat ``skip``? Measured on the default model (CPU) before building the rung.

A first-block-cache step (FirstBlockCache-style, fixed rather than adaptive) computes the denoiser's first
transformer block afresh and stands in for the other blocks with their residual from the last computed step
(what they added to the hidden states then). It costs the embedding, one block and the output layers; ``skip``
costs nothing. For the schedules of ``extrapolate_cpu.py`` (8 and 28 steps), the steps ``skip`` leaves uncomputed
are run as first-block steps instead: mean SSIM against the all-fp32 image over 4 prompts x 2 seeds, and the
image's seconds against the all-fp32 image's.

    python benchmarks/first_block_cpu.py --out benchmarks/results/first_block_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from extrapolate_cpu import patterns

from tmpdiff import Schedule, apply_schedule, load_pipeline
from tmpdiff.engine.settings import RunSettings
from tmpdiff.measure.metrics import ssim
from tmpdiff.pipelines.registry import get_model, quiet_libraries
from tmpdiff.studies.prompts import calibration_prompts


class FirstBlockSteps:
    """Patches a DiT's blocks: on the steps in ``partial`` block 0 runs and the others add, together, the
    residual they added at the last computed step."""

    def __init__(self, transformer: Any) -> None:
        self.blocks = transformer.transformer_blocks
        self.partial: set[int] = set()
        self.step, self.after_first, self.residual = -1, None, None
        transformer.register_forward_pre_hook(self._next_step)
        self._forwards = [block.forward for block in self.blocks]
        for index, block in enumerate(self.blocks):
            block.forward = self._block_forward(index)

    def _next_step(self, *_: Any) -> None:
        self.step += 1  # the DiT pipeline calls the denoiser once a step (guidance batched)

    def _block_forward(self, index: int) -> Any:
        def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if index > 0 and self.step in self.partial:
                return self.after_first + self.residual if index == 1 else hidden_states
            out = self._forwards[index](hidden_states, *args, **kwargs)
            if index == 0:
                self.after_first = out
            elif index == len(self.blocks) - 1:
                self.residual = out - self.after_first
            return out
        return forward

    @contextmanager
    def on(self, steps: list[int]) -> Iterator[None]:
        self.partial, self.step = set(steps), -1
        try:
            yield
        finally:
            self.partial = set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/first_block_cpu.json"))
    args = parser.parse_args()
    quiet_libraries()
    spec = get_model("shapes-dit")
    prompts = calibration_prompts(spec.labels, 4)
    pipe = load_pipeline(spec.name, "cpu")
    first_block = FirstBlockSteps(pipe.transformer)

    def image(settings: RunSettings, schedule: str | None = None, partial: list[int] | None = None) -> Any:
        with torch.no_grad(), first_block.on(partial or []):
            if schedule is None:
                return pipe(**settings.call_kwargs("cpu")).images[0]
            with apply_schedule(pipe, schedule):
                return pipe(**settings.call_kwargs("cpu")).images[0]

    def seconds(settings: RunSettings, partial: list[int]) -> float:
        start = time.perf_counter()
        image(settings, partial=partial)
        return time.perf_counter() - start

    report: dict = {"model": spec.name, "prompts": prompts, "seeds": [0, 1], "comparisons": []}
    for steps in (8, 28):
        settings = [RunSettings(model=spec.name, prompt=p, seed=s, steps=steps) for p in prompts for s in (0, 1)]
        references = [image(s) for s in settings]
        full_s = statistics.median(seconds(settings[0], []) for _ in range(3))
        for label, schedule in patterns(steps, "skip").items():
            uncomputed = [i for i, name in enumerate(Schedule.parse(schedule)) if name == "skip"]
            skip = statistics.fmean(ssim(image(s, schedule), r) for s, r in zip(settings, references, strict=True))
            partial = statistics.fmean(ssim(image(s, partial=uncomputed), r)
                                       for s, r in zip(settings, references, strict=True))
            partial_s = statistics.median(seconds(settings[0], uncomputed) for _ in range(3))
            row = {"steps": steps, "pattern": label, "skip_schedule": schedule, "ssim_skip": round(skip, 4),
                   "ssim_first_block": round(partial, 4), "first_block_better": partial > skip,
                   "image_seconds_all_fp32": round(full_s, 3), "image_seconds_first_block": round(partial_s, 3)}
            report["comparisons"].append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

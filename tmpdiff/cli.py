"""Command line: ``python -m tmpdiff generate|precisions|models``.

User mistakes print one line on stderr and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from .models import DEFAULT_MODEL, MODELS
from .runner import Engine, RunSettings, default_device, precision_table

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tmpdiff", description="Temporal mixed precision for diffusion.")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="render one image with a per-step precision schedule")
    gen.add_argument("--model", default=DEFAULT_MODEL, help=f"registry name (default {DEFAULT_MODEL}); see `models`")
    gen.add_argument("--prompt", default=None, help="prompt, or class name for class-conditional models")
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--size", type=int, default=None, help="image height and width (default: the model's)")
    gen.add_argument("--guidance", type=float, default=None)
    gen.add_argument("--schedule", default=None,
                     help="e.g. 'bf16*4,fp8*20,bf16*4' (default: every step in the reference precision)")
    gen.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                     help="torch.compile each variant (default: on for CUDA)")
    gen.add_argument("--out", required=True, type=Path, help="PNG file to write")

    commands.add_parser("precisions", help="list the precision registry on this device")
    commands.add_parser("models", help="list the model registry")
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    device = args.device or default_device()
    try:
        if args.command == "precisions":
            for row in precision_table(device):
                print(f"{row['name']:<7} {row['status']:<12} {row['description']}  [{row['reason']}]")
        elif args.command == "models":
            for spec in MODELS.values():
                print(f"{spec.name:<13} {spec.family:<7} {spec.dtype:<5} {spec.steps:>3} steps {spec.size:>5}px  "
                      f"{spec.source}")
        else:
            return _generate(args, device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def _generate(args: argparse.Namespace, device: str) -> int:
    if args.out.suffix.lower() != ".png":
        raise ValueError(f"--out must name a .png file, got {str(args.out)!r}")
    if not args.out.parent.exists():
        raise ValueError(f"--out folder {str(args.out.parent)!r} does not exist")
    settings = RunSettings(model=args.model, prompt=args.prompt, negative_prompt=args.negative_prompt,
                           seed=args.seed, steps=args.steps, size=args.size, guidance=args.guidance)
    engine = Engine(device=device, compile=args.compile)
    schedule = engine.check_schedule(args.schedule or settings.reference_schedule(), settings)
    result = engine.generate(settings, schedule)
    result.image.save(args.out)
    print(json.dumps({
        "model": settings.model, "prompt": settings.resolved_prompt, "seed": settings.seed,
        "schedule": str(result.schedule), "steps_run": result.steps_run,
        "seconds": round(result.seconds, 4), "simulated": result.simulated, "device": result.device,
        "out": str(args.out),
    }))
    return 0


def _quiet_libraries() -> None:
    """Library chatter (deprecations, missing optional packages) is not for CLI users."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")
    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torch").setLevel(logging.ERROR)

"""The model registry: hub pipelines, tiny random builds, and the project's trained default.

``load_pipeline(name)`` returns a stock diffusers pipeline; ``ModelSpec.call_kwargs`` turns the
settings every model shares (prompt, seed, steps, size, guidance) into that pipeline's arguments.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tmpdiff.errors import FieldError
from tmpdiff.pipelines import tiny

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_MODEL", "MODELS", "ModelSpec", "config_hash", "get_model", "load_pipeline", "quiet_libraries",
]

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # tmpdiff/: its weights/ are package data, installed with it
SHIPPED_DIR = PACKAGE_DIR / "weights"
DEFAULT_MODEL = "shapes-dit"


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the registry.

    Args:
        name: the key users type (``--model``).
        family: flux, sd3, sdxl, sd15, pixart, sana or dit.
        source: a hub id, ``tiny:<name>`` for a random build, or a path shipped in the repo.
        dtype: the reference precision's name (``bf16``, ``fp16`` or ``fp32``).
        steps, size, guidance: recommended settings.
        example_prompt: what the CLI and app use when no prompt is given.
        labels: class names, for class-conditional models whose prompt is a label.
        frames: frames of a video model (0 for an image model); its result is stored and compared as a frame
            sheet (``tmpdiff.engine.frames.frame_sheet``), scored frame by frame.
    """

    name: str
    family: str
    source: str
    dtype: str
    steps: int
    size: int
    guidance: float
    example_prompt: str
    description: str = ""
    labels: tuple[str, ...] = field(default=())
    frames: int = 0

    @property
    def architecture(self) -> str:
        """What step costs depend on: a random-weight model shares its original's architecture."""
        return self.source.removeprefix("random:") if self.is_random else self.name

    @property
    def is_tiny(self) -> bool:
        return self.source.startswith("tiny:")

    @property
    def is_random(self) -> bool:
        return self.source.startswith("random:")

    @property
    def is_local(self) -> bool:
        return self.is_tiny or self.is_random or self.source.startswith("weights/")

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.dtype]

    def label_id(self, prompt: str) -> int:
        key = " ".join(prompt.lower().split())
        if key not in self.labels:
            classes = ", ".join(repr(x) for x in self.labels).replace("{", "{{").replace("}", "}}")
            raise FieldError("prompt", prompt, f"model {self.name!r} draws only its classes, not {{value}}: use one "
                             f"of {classes}")
        return self.labels.index(key)

    def call_kwargs(
        self,
        prompt: str,
        *,
        steps: int,
        seed: int,
        size: int | None = None,
        guidance: float | None = None,
        negative_prompt: str = "",
        device: str | torch.device = "cpu",
        seeded: bool = True,
    ) -> dict[str, Any]:
        """Arguments for this family's pipeline ``__call__``; every run is seeded (``seeded=False``: the same checks
        and arguments without a generator, so that checking settings imports no torch)."""
        if steps <= 0:
            raise FieldError("steps", steps, "{steps} must be a positive number, got {value}")
        size = self.size if size is None else size
        if size <= 0 or size % 16:
            raise FieldError("size", size, "{size} must be a positive multiple of 16, got {value}")
        guidance = self.guidance if guidance is None else guidance
        generator = _seeded_generator(seed) if seeded else None
        if self.family == "dit":
            if size != self.size:
                raise FieldError("size", size, f"model {self.name!r} draws only {self.size}x{self.size} images, got "
                                 "{size} {value}")
            return {"class_labels": [self.label_id(prompt)], "num_inference_steps": steps,
                    "guidance_scale": guidance, "generator": generator}
        kwargs: dict[str, Any] = {
            "prompt": prompt, "num_inference_steps": steps, "guidance_scale": guidance,
            "height": size, "width": size, "generator": generator,
        }
        if negative_prompt and self.family not in ("flux",):
            kwargs["negative_prompt"] = negative_prompt
        if self.family in ("pixart", "sana"):
            kwargs["use_resolution_binning"] = False
        if self.family == "flux" and self.is_tiny:
            kwargs["max_sequence_length"] = 32
        if self.frames:
            kwargs.update(num_frames=self.frames, output_type="pil")
            if self.is_tiny:
                kwargs["max_sequence_length"] = 16
        return kwargs


def _seeded_generator(seed: int) -> torch.Generator:
    import torch

    return torch.Generator(device="cpu").manual_seed(int(seed))


_SHAPE_LABELS = tuple(
    f"{colour} {shape}" for shape in ("square", "circle", "triangle") for colour in ("red", "green", "blue", "yellow")
)

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("shapes-dit", "dit", "weights/shapes-dit", "fp32", 8, 64, 3.0, "red circle",
                  "the project's trained class-conditional DiT: coloured shapes, 64x64, runs anywhere",
                  labels=_SHAPE_LABELS),
        ModelSpec("flux-dev", "flux", "black-forest-labs/FLUX.1-dev", "bf16", 28, 1024, 3.5,
                  "A cat holding a sign that says hello world"),
        ModelSpec("flux-schnell", "flux", "black-forest-labs/FLUX.1-schnell", "bf16", 4, 1024, 0.0,
                  "A cat holding a sign that says hello world"),
        ModelSpec("sd3.5-medium", "sd3", "stabilityai/stable-diffusion-3.5-medium", "bf16", 40, 1024, 4.5,
                  "A capybara holding a sign that reads Hello World"),
        ModelSpec("sd3.5-large", "sd3", "stabilityai/stable-diffusion-3.5-large", "bf16", 28, 1024, 3.5,
                  "A capybara holding a sign that reads Hello World"),
        ModelSpec("sdxl", "sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "fp16", 30, 1024, 5.0,
                  "An astronaut riding a green horse"),
        ModelSpec("sd1.5", "sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", "fp16", 30, 512, 7.5,
                  "a photo of an astronaut riding a horse on mars"),
        ModelSpec("pixart-sigma", "pixart", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", "fp16", 20, 1024, 4.5,
                  "A small cactus with a happy face in the Sahara desert"),
        ModelSpec("sana", "sana", "Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers", "bf16", 20, 1024, 4.5,
                  "a cyberpunk cat with a neon sign that says Sana"),
        ModelSpec("flux-dev-random", "flux", "random:flux-dev", "bf16", 28, 1024, 3.5,
                  "A cat holding a sign that says hello world",
                  "FLUX.1-dev architecture with random weights: GPU latency and memory only, images are noise"),
        ModelSpec("wan2.1-t2v-1.3b", "wan", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "bf16", 50, 480, 5.0,
                  "A cat walks on the grass, realistic", "Wan 2.1 text-to-video, 1.3B: 81 frames", frames=81),
        ModelSpec("wan2.1-t2v-14b", "wan", "Wan-AI/Wan2.1-T2V-14B-Diffusers", "bf16", 50, 480, 5.0,
                  "A cat walks on the grass, realistic", "Wan 2.1 text-to-video, 14B: 81 frames", frames=81),
        ModelSpec("wan2.1-14b-random", "wan", "random:wan2.1-t2v-14b", "bf16", 50, 480, 5.0,
                  "A cat walks on the grass, realistic",
                  "Wan 2.1 14B's architecture with random weights: GPU latency and memory only, videos are noise",
                  frames=81),
        ModelSpec("ltx-video", "ltx", "Lightricks/LTX-Video", "bf16", 50, 512, 3.0,
                  "A woman with long brown hair walks through a sunlit forest", "LTX-Video text-to-video: 121 frames",
                  frames=121),
        ModelSpec("cogvideox-2b", "cogvideox", "THUDM/CogVideoX-2b", "fp16", 50, 480, 6.0,
                  "A panda playing a guitar in a bamboo forest", "CogVideoX 2B text-to-video: 49 frames", frames=49),
        ModelSpec("wan2.2-t2v-a14b", "wan", "Wan-AI/Wan2.2-T2V-A14B-Diffusers", "bf16", 40, 480, 4.0,
                  "A cat walks on the grass, realistic",
                  "Wan 2.2 text-to-video, two 14B denoisers (high noise, then low noise): 81 frames", frames=81),
        *(
            ModelSpec(name, tiny.FAMILIES.get(name, name.removeprefix("tiny-")), f"tiny:{name}", "fp32", 4,
                      tiny.SIZES.get(name, 32), 3.0, "a photo of a red cat",
                      "random weights, for tests: images are noise", frames=tiny.FRAMES.get(name, 0))
            for name in tiny.BUILDERS
        ),
    )
}

_PIPELINE_CLASSES = {
    "flux": "FluxPipeline", "sd3": "StableDiffusion3Pipeline", "sdxl": "StableDiffusionXLPipeline",
    "sd15": "StableDiffusionPipeline", "pixart": "PixArtSigmaPipeline", "sana": "SanaPipeline", "dit": "DiTPipeline",
    "wan": "WanPipeline", "ltx": "LTXPipeline", "cogvideox": "CogVideoXPipeline",
}
_LOAD_LOCK = threading.Lock()


def get_model(name: str) -> ModelSpec:
    """The registry entry ``name``; a ``FieldError`` naming the choices otherwise."""
    spec = MODELS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise FieldError("model", name, f"unknown {{model}} {{value}}: choose one of {', '.join(MODELS)}")
    return spec


# Libraries whose own warnings are not for CLI or app users (their deprecations, optional packages, load bars).
QUIET_MODULES = (r"(diffusers|transformers|torch|torchao|torchvision|accelerate|huggingface_hub|safetensors|lpips|"
                 r"peft|timm|skimage|scipy|numpy|PIL|gradio|gradio_client|ray|sqlalchemy|tqdm)(\..*)?$")


def quiet_libraries() -> None:
    """Library chatter is not for CLI or app users: silenced by category (deprecations, syntax warnings of compiled
    dependencies) and by the module that warns, never wholesale; every ``TmpdiffWarning`` (a result not kept, a
    compiled variant rebuilt) is always said."""
    import logging
    import os
    import warnings

    from diffusers.utils import logging as diffusers_logging

    from tmpdiff.errors import TmpdiffWarning

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning, SyntaxWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", module=QUIET_MODULES)
    warnings.filterwarnings("always", category=TmpdiffWarning)  # the last added is the first matched
    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torch").setLevel(logging.ERROR)


def config_hash(name: str) -> str:
    """A hash of the model's identity and configuration, computed without loading any weights."""
    spec = get_model(name)
    if spec.is_tiny:
        identity: object = inspect.getsource(tiny.BUILDERS[spec.name]) + f"width={tiny.WIDTH}"
    elif spec.is_random:
        identity = {"random": spec.source, "init": "leafwise", "stored": "safetensors"}
    elif spec.is_local:
        root = PACKAGE_DIR / spec.source
        identity = {p.relative_to(root).as_posix(): p.read_text() if p.suffix == ".json" else p.stat().st_size
                    for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in (".json", ".safetensors")}
    else:
        identity = {"hub": spec.source, "revision": "main"}
    blob = json.dumps({"name": spec.name, "dtype": spec.dtype, "identity": identity}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_pipeline(name: str, device: str | torch.device = "cpu", host: bool = False,
                  cache_dir: str | Path | None = None) -> Any:
    """A stock diffusers pipeline for the registry entry ``name`` on ``device``, in its reference dtype; with
    ``host`` its weights stay in host memory (memory-mapped from their checkpoint), for a memory budget's placement to
    put on ``device`` (``memory.placer``). A random-weight model is written once into ``cache_dir`` (default: the
    tmpdiff cache folder) and loaded from it like a real checkpoint."""
    import torch

    spec = get_model(name)
    where = torch.device("cpu") if host else torch.device(device)
    with _LOAD_LOCK:
        if spec.is_tiny:
            pipe = tiny.BUILDERS[spec.name]()
        elif spec.is_random:
            if torch.device(device).type != "cuda":
                raise FieldError("model", spec.name, "{model} {value} is real-size with random weights: it needs a "
                                 "CUDA GPU")
            pipe = _from_random_checkpoint(spec, cache_dir)
        else:
            pipe = _from_pretrained(spec)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(where, spec.torch_dtype) if spec.is_tiny else pipe.to(where)


WEIGHTS_DIR_ENV = "TMPDIFF_WEIGHTS_DIR"  # where random weights are written, if not in the cache folder


def random_weights_folder(name: str, cache_dir: str | Path | None = None) -> Path:
    """Where model ``name``'s random weights are written: ``$TMPDIFF_WEIGHTS_DIR``, else the cache folder's
    ``random-weights``; the folder is named by the registry and its configuration only."""
    import os

    from tmpdiff.variants.compile_cache import cache_root

    root = Path(os.environ[WEIGHTS_DIR_ENV]) if os.environ.get(WEIGHTS_DIR_ENV) else cache_root(cache_dir) / \
        "random-weights"
    return root.expanduser() / f"{name}-{config_hash(name)}"


def _from_random_checkpoint(spec: ModelSpec, cache_dir: str | Path | None) -> Any:
    from tmpdiff.pipelines.random_weights import write_random

    folder = write_random(spec.architecture, random_weights_folder(spec.name, cache_dir), spec.torch_dtype)
    return _pipeline_class(spec).from_pretrained(folder, dtype=spec.torch_dtype)


def _pipeline_class(spec: ModelSpec) -> Any:
    """The diffusers pipeline class of ``spec``'s family."""
    import diffusers

    return getattr(diffusers, _PIPELINE_CLASSES[spec.family])


def _from_pretrained(spec: ModelSpec) -> Any:
    cls = _pipeline_class(spec)
    source = str(PACKAGE_DIR / spec.source) if spec.is_local else spec.source
    try:
        return cls.from_pretrained(source, dtype=spec.torch_dtype)
    except OSError as exc:
        raise ValueError(
            f"could not load {spec.source!r} for model {spec.name!r} ({str(exc).splitlines()[0][:200]}): "
            "it needs network access to the Hugging Face Hub (and accepted licence terms for gated models) "
            "or a copy in the local cache; offline, use the default model "
            f"{DEFAULT_MODEL!r} or a tiny-* model"
        ) from None

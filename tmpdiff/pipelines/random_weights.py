"""Real-size architectures with random weights, built from configs in code.

For latency, memory and end-to-end runs on a GPU where the real weights cannot be downloaded: their images are noise
and their quality numbers mean nothing. A pipeline is written once into the cache folder as a diffusers checkpoint in
safetensors (``write_random``) and loaded from there with ``from_pretrained``, the path real weights take:
memory-mapped, so "weights" seconds and host bytes are what a user with the real checkpoint sees. To write it, each
large part is built on the meta device and given its default initial values on the GPU one layer at a time
(``leafwise``), one part at a time, so a 17 B-parameter pipeline needs neither one device's memory for all of it nor
the CPU's slow initialisation.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tmpdiff.pipelines import tiny

FLUX_DEV_TRANSFORMER = {
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
SD35_LARGE_TRANSFORMER = {
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 38, "attention_head_dim": 64,
    "num_attention_heads": 38, "joint_attention_dim": 4096, "caption_projection_dim": 2432,
    "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 192, "qk_norm": "rms_norm",
}
SDXL_UNET = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280), "cross_attention_dim": 2048, "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20), "use_linear_projection": True, "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816,
}

# Wan 2.1 T2V 14B's transformer (each of Wan 2.2 A14B's two denoisers has the same shape).
WAN_14B_TRANSFORMER = {
    "patch_size": (1, 2, 2), "num_attention_heads": 40, "attention_head_dim": 128, "in_channels": 16,
    "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 13824, "num_layers": 40,
    "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024,
}


# T5-XXL's encoder (FLUX.1's T5 v1.1 and Wan's umT5 share it; their vocabularies differ).
T5_XXL = {
    "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64, "feed_forward_proj": "gated-gelu",
    "relative_attention_num_buckets": 32, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
}

def leafwise(make: Callable[[], nn.Module], place: str | torch.device, dtype: torch.dtype) -> nn.Module:
    """``make()`` built on the meta device, then each layer's tensors given their default initial values on the GPU
    (the CPU without one), one layer at a time, and moved to ``place``. For modules without buffers (their values
    are not initialised by ``reset_parameters``)."""
    with building_on("meta", dtype):
        module = make()
    if any(True for _ in module.buffers()):
        raise ValueError(f"{type(module).__name__} has buffers: build it with building_on instead")
    compute = torch.device("cuda") if torch.cuda.is_available() else torch.device(place)
    for layer in module.modules():
        own = [*layer.parameters(recurse=False)]
        if not own:
            continue
        layer.to_empty(device=compute, recurse=False)
        _initialise(layer)
        for parameter in layer.parameters(recurse=False):
            parameter.data = parameter.data.to(place)
    return module.eval()


def _initialise(layer: nn.Module) -> None:
    """A layer's default initial values: its own ``reset_parameters``, else a norm's (weights one, biases zero)."""
    reset = getattr(layer, "reset_parameters", None)
    if callable(reset):
        reset()
        return
    with torch.no_grad():
        for name, parameter in layer.named_parameters(recurse=False):
            parameter.fill_(1.0 if name == "weight" else 0.0)


@contextmanager
def building_on(device: str | torch.device, dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def flux_transformer(device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16) -> Any:
    return leafwise(_flux_transformer, device, dtype)


def sd35_large_transformer(device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16) -> Any:
    from diffusers import SD3Transformer2DModel

    with building_on(device, dtype):
        return SD3Transformer2DModel(**SD35_LARGE_TRANSFORMER).eval()


def sdxl_unet(device: str | torch.device = "cuda", dtype: torch.dtype = torch.float16) -> Any:
    from diffusers import UNet2DConditionModel

    with building_on(device, dtype):
        return UNet2DConditionModel(**SDXL_UNET).eval()


def wan_14b_transformer(device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16) -> Any:
    with building_on(device, dtype):
        return _wan_transformer().eval()


@dataclass(frozen=True)
class RandomBuild:
    """How a real-size pipeline with random weights is made: its diffusers class, its small parts (tokenizers,
    scheduler, small models: built at once) and its large models, each made on the meta device by a function and
    given values one at a time (``leafwise`` where it has no buffers), so writing it never holds two at once."""

    pipeline: str
    small: Callable[[torch.device, torch.dtype], dict[str, Any]]
    large: dict[str, Callable[[], nn.Module]]
    leafwise: frozenset[str] = frozenset()  # large parts without buffers, given values layer by layer

    def values(self, name: str, device: torch.device, dtype: torch.dtype) -> nn.Module:
        """Large part ``name`` with its random values on ``device``."""
        if name in self.leafwise:
            return leafwise(self.large[name], device, dtype)
        with building_on(device, dtype):
            return self.large[name]().eval()


def _wan_small(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler

    with building_on(device, dtype):
        vae = AutoencoderKLWan().eval()  # its defaults are Wan 2.1's VAE
    return {"tokenizer": tiny.tokenizer(512), "vae": vae, "scheduler": UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)}


def _umt5_xxl() -> nn.Module:
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(vocab_size=256384, **T5_XXL))


def _wan_transformer() -> nn.Module:
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(**WAN_14B_TRANSFORMER)


def _flux_small(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    with building_on(device, dtype):  # CLIP's position ids are a buffer
        clip = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=77, projection_dim=768, pad_token_id=0, eos_token_id=1, bos_token_id=2)).eval()
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2, norm_num_groups=32, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
            use_quant_conv=False, use_post_quant_conv=False).eval()
    return {"scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0), "vae": vae, "text_encoder": clip,
            "tokenizer": tiny.tokenizer(77), "tokenizer_2": tiny.tokenizer(512)}


def _t5_xxl() -> nn.Module:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=32128, **T5_XXL))


def _flux_transformer() -> nn.Module:
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER)


# The random-weight pipelines of the registry (``random:<architecture>``): FLUX.1-dev's (CLIP-L, T5-XXL, 12 B
# transformer, VAE) and Wan 2.1 T2V 14B's (umT5-XXL, 14 B transformer, Wan VAE).
RANDOM_BUILDS = {
    "flux-dev": RandomBuild("FluxPipeline", _flux_small, {"text_encoder_2": _t5_xxl, "transformer": _flux_transformer},
                            frozenset({"text_encoder_2", "transformer"})),
    "wan2.1-t2v-14b": RandomBuild("WanPipeline", _wan_small, {"text_encoder": _umt5_xxl,
                                                              "transformer": _wan_transformer}),
}


def write_random(architecture: str, folder: Path, dtype: torch.dtype) -> Path:
    """``folder``, holding ``architecture``'s random weights as a diffusers pipeline in safetensors: written once
    (values made on the GPU where there is one, a large part at a time; the folder appears whole or not at all), so
    every later process loads them as a real checkpoint loads, memory-mapped (``from_pretrained``)."""
    if (folder / "model_index.json").is_file():
        return folder
    import diffusers

    build = RANDOM_BUILDS[architecture]
    compute = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    torch.manual_seed(0)
    small = build.small(compute, dtype)
    with building_on("meta", dtype):
        shapes = {name: make() for name, make in build.large.items()}
    try:
        getattr(diffusers, build.pipeline)(**small, **shapes).save_config(partial)  # model_index.json
        for name, part in small.items():
            part.save_pretrained(partial / name)
        for name in build.large:
            module: Any = build.values(name, compute, dtype)
            module.save_pretrained(partial / name, safe_serialization=True)
            del module
            if compute.type == "cuda":
                torch.cuda.empty_cache()
    except OSError as exc:  # a full disk, a folder that cannot be written: nothing half-written stays
        shutil.rmtree(partial, ignore_errors=True)
        raise ValueError(f"could not write random weights into {str(folder)!r} ({exc.strerror or exc}): free disk "
                         "space there (a FLUX.1-dev-sized model takes about 34 GB) or set $TMPDIFF_WEIGHTS_DIR to "
                         "another folder") from None
    try:
        partial.rename(folder)
    except OSError:  # another process wrote it first
        shutil.rmtree(partial, ignore_errors=True)
        if not (folder / "model_index.json").is_file():
            raise
    return folder

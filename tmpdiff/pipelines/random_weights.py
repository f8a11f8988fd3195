"""Real-size architectures with random weights, built from configs in code.

For latency, memory and end-to-end runs on a GPU where the real weights cannot be downloaded:
their images are noise and their quality numbers mean nothing. The large parts are built on the meta device
and given their default initial values on the GPU one layer at a time (``leafwise``), then kept where the pipeline
lives: on the GPU, or in host memory for a memory budget's placement (as ``from_pretrained`` loads real weights),
so a 17 B-parameter pipeline needs neither one device's memory for all of it at once nor the CPU's slow
initialisation, and a budgeted and an unbudgeted build hold the same values.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
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
    from diffusers import FluxTransformer2DModel

    return leafwise(lambda: FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER), device, dtype)


def sd35_large_transformer(device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16) -> Any:
    from diffusers import SD3Transformer2DModel

    with building_on(device, dtype):
        return SD3Transformer2DModel(**SD35_LARGE_TRANSFORMER).eval()


def sdxl_unet(device: str | torch.device = "cuda", dtype: torch.dtype = torch.float16) -> Any:
    from diffusers import UNet2DConditionModel

    with building_on(device, dtype):
        return UNet2DConditionModel(**SDXL_UNET).eval()


def wan_14b_transformer(device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16) -> Any:
    from diffusers import WanTransformer3DModel

    with building_on(device, dtype):
        return WanTransformer3DModel(**WAN_14B_TRANSFORMER).eval()


def wan_14b_pipeline(device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16) -> Any:
    """Wan 2.1 T2V 14B's whole pipeline (umT5-XXL, 14 B transformer, Wan VAE), random weights."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    with building_on(device, dtype):
        umt5 = UMT5EncoderModel(UMT5Config(
            vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
            feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, pad_token_id=0, eos_token_id=1,
            decoder_start_token_id=0)).eval()
        vae = AutoencoderKLWan().eval()  # its defaults are Wan 2.1's VAE
    return WanPipeline(tokenizer=tiny.tokenizer(512), text_encoder=umt5, vae=vae, transformer=wan_14b_transformer(
        device, dtype), scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                          flow_shift=5.0))


def flux_dev_pipeline(device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16) -> Any:
    """FLUX.1-dev's whole pipeline (CLIP-L, T5-XXL, 12 B transformer, VAE), random weights, on ``device`` (``cpu``:
    in host memory, for a memory budget's placement)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    compute = "cuda" if torch.cuda.is_available() else device
    with building_on(compute, dtype):  # the small parts (CLIP's position ids are a buffer)
        clip = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=77, projection_dim=768, pad_token_id=0, eos_token_id=1, bos_token_id=2)).eval()
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2, norm_num_groups=32, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
            use_quant_conv=False, use_post_quant_conv=False).eval()
    clip, vae = clip.to(device), vae.to(device)
    t5 = leafwise(lambda: T5EncoderModel(T5Config(
        vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0)), device, dtype)
    transformer = flux_transformer(device, dtype)
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae, text_encoder=clip,
                        tokenizer=tiny.tokenizer(77), text_encoder_2=t5, tokenizer_2=tiny.tokenizer(512),
                        transformer=transformer)


# The random-weight pipelines of the registry (``random:<architecture>``).
RANDOM_PIPELINES = {"flux-dev": flux_dev_pipeline, "wan2.1-t2v-14b": wan_14b_pipeline}

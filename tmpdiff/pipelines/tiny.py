"""Tiny random-weight pipelines of every supported family, built from configs in code.

They need no network and run in a second on a CPU: for tests of the machinery, never for
quality numbers (their images are noise). Sizes keep every Linear layer a multiple of 16 wide,
so torchao really quantizes them instead of silently skipping them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

WIDTH = 32  # text-encoder hidden size and denoiser inner width
_WORDS = (
    "a an the of and with on in at to photo painting of red green blue yellow black white cat dog "
    "house tree car city sky sea mountain portrait person flower bird river night day sun moon"
).split()


def _seed() -> None:
    """Every tiny model starts from the same random weights (torch is imported here, not with the registry)."""
    import torch

    torch.manual_seed(0)


def tokenizer(max_length: int = 77) -> Any:
    """A word-level fast tokenizer with a fixed vocabulary, built without any download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<s>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + sorted(set(_WORDS)))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", bos_token="<s>",
        unk_token="<unk>", model_max_length=max_length,
    )


def _clip(projection: bool = False) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=64, hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=WIDTH,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _t5(d_model: int = WIDTH) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=64, d_model=d_model, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return T5EncoderModel(config).eval()


def _vae(latent_channels: int, blocks: tuple[int, ...] = (WIDTH,), **extra: Any) -> Any:
    from diffusers import AutoencoderKL

    n = len(blocks)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=blocks,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        layers_per_block=1, norm_num_groups=8, sample_size=32, **extra,
    ).eval()


def tiny_flux() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    _seed()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=WIDTH, pooled_projection_dim=WIDTH, axes_dims_rope=[4, 4, 8],
    )
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae(4, (WIDTH, WIDTH), shift_factor=0.0609,
                                                              scaling_factor=1.5035, use_quant_conv=False,
                                                              use_post_quant_conv=False),
        text_encoder=_clip(), tokenizer=tokenizer(), text_encoder_2=_t5(), tokenizer_2=tokenizer(512),
        transformer=transformer.eval(),
    )


def tiny_sd3() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    _seed()
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=1, in_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        caption_projection_dim=WIDTH, joint_attention_dim=2 * WIDTH, pooled_projection_dim=2 * WIDTH, out_channels=4,
    )
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), transformer=transformer.eval(),
        vae=_vae(4, (WIDTH, WIDTH), shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=_clip(True), tokenizer=tokenizer(), text_encoder_2=_clip(True), tokenizer_2=tokenizer(),
        text_encoder_3=_t5(2 * WIDTH), tokenizer_3=tokenizer(256),
    )


def _unet(cross_attention_dim: int, **extra: Any) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(WIDTH, 2 * WIDTH), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, norm_num_groups=16, **extra,
    ).eval()


def tiny_sdxl() -> Any:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    _seed()
    unet = _unet(
        2 * WIDTH, attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=16, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=WIDTH + 6 * 16,
    )
    return StableDiffusionXLPipeline(
        vae=_vae(4, (WIDTH, WIDTH)), text_encoder=_clip(), tokenizer=tokenizer(), text_encoder_2=_clip(True),
        tokenizer_2=tokenizer(), unet=unet, scheduler=EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading",
            steps_offset=1,
        ),
    )


def tiny_sd15() -> Any:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    _seed()
    return StableDiffusionPipeline(
        vae=_vae(4, (WIDTH, WIDTH)), text_encoder=_clip(), tokenizer=tokenizer(), unet=_unet(WIDTH),
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def tiny_pixart() -> Any:
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    _seed()
    transformer = PixArtTransformer2DModel(
        sample_size=16, num_layers=2, patch_size=2, attention_head_dim=16, num_attention_heads=2,
        caption_channels=WIDTH, in_channels=4, cross_attention_dim=WIDTH, out_channels=8, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6,
    )
    return PixArtSigmaPipeline(
        tokenizer=tokenizer(300), text_encoder=_t5(), vae=_vae(4, (WIDTH, WIDTH)), transformer=transformer.eval(),
        scheduler=DPMSolverMultistepScheduler(),
    )


def tiny_sana() -> Any:
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    _seed()
    transformer = SanaTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=2, num_attention_heads=2, attention_head_dim=16,
        num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=WIDTH, caption_channels=WIDTH,
        sample_size=32,
    )
    vae = AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"), decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1), downsample_block_type="conv",
        upsample_block_type="interpolate", decoder_norm_types="rms_norm", decoder_act_fns="silu",
        scaling_factor=0.41407,
    )
    text_encoder = Gemma2Model(Gemma2Config(
        vocab_size=64, hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )).eval()
    return SanaPipeline(
        tokenizer=tokenizer(300), text_encoder=text_encoder, vae=vae.eval(), transformer=transformer.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
    )


def tiny_wan(two_denoisers: bool = True) -> Any:
    """A Wan text-to-video pipeline (2 frames of latents, 16x16): with ``two_denoisers``, Wan 2.2's layout of
    a high-noise ``transformer`` and a low-noise ``transformer_2`` that takes over at ``boundary_ratio``."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    _seed()
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()

    def transformer() -> Any:
        return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16,
                                     in_channels=16, out_channels=16, text_dim=WIDTH, freq_dim=WIDTH, ffn_dim=WIDTH,
                                     num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                     rope_max_seq_len=32).eval()

    first = transformer()
    return WanPipeline(tokenizer=tokenizer(16), text_encoder=_t5(), vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), transformer=first,
                       transformer_2=transformer() if two_denoisers else None,
                       boundary_ratio=0.5 if two_denoisers else None)


def tiny_cascade_prior() -> Any:
    """Stable Cascade's prior pipeline, whose denoiser is called ``prior`` (not ``transformer`` or ``unet``)."""
    from diffusers import DDPMWuerstchenScheduler, StableCascadePriorPipeline, StableCascadeUNet

    _seed()
    prior = StableCascadeUNet(conditioning_dim=128, block_out_channels=(128, 128), num_attention_heads=(2, 2),
                              down_num_layers_per_block=(1, 1), up_num_layers_per_block=(1, 1),
                              clip_image_in_channels=768, switch_level=(False,), clip_text_in_channels=WIDTH,
                              clip_text_pooled_in_channels=WIDTH, dropout=(0.1, 0.1)).eval()
    return StableCascadePriorPipeline(prior=prior, text_encoder=_clip(projection=True), tokenizer=tokenizer(),
                                      scheduler=DDPMWuerstchenScheduler(), image_encoder=None, feature_extractor=None)


def tiny_ltx() -> Any:
    """LTX-Video (9 frames, 32x32)."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    _seed()
    transformer = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                                             num_attention_heads=4, attention_head_dim=8, cross_attention_dim=WIDTH,
                                             num_layers=1, caption_channels=WIDTH).eval()
    vae = AutoencoderKLLTXVideo(latent_channels=8, block_out_channels=(8, 8, 8, 8),
                                spatio_temporal_scaling=(True, True, False, False), layers_per_block=(1, 1, 1, 1, 1),
                                patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False).eval()
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    return LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=_t5(),
                       tokenizer=tokenizer(16), transformer=transformer)


def tiny_cogvideox() -> Any:
    """CogVideoX (9 frames, 16x16)."""
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    _seed()
    transformer = CogVideoXTransformer3DModel(num_attention_heads=4, attention_head_dim=8, in_channels=4,
                                              out_channels=4, time_embed_dim=2, text_embed_dim=WIDTH, num_layers=1,
                                              sample_width=2, sample_height=2, sample_frames=9, patch_size=2,
                                              temporal_compression_ratio=4, max_text_seq_length=16).eval()
    vae = AutoencoderKLCogVideoX(down_block_types=("CogVideoXDownBlock3D",) * 4,
                                 up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
                                 latent_channels=4, layers_per_block=1, norm_num_groups=2,
                                 temporal_compression_ratio=4).eval()
    return CogVideoXPipeline(tokenizer=tokenizer(16), text_encoder=_t5(), vae=vae, transformer=transformer,
                             scheduler=CogVideoXDDIMScheduler())


def tiny_wan21() -> Any:
    """Wan 2.1's layout: one denoiser."""
    return tiny_wan(two_denoisers=False)


def tiny_wan22() -> Any:
    """Wan 2.2's layout: a high-noise and a low-noise denoiser."""
    return tiny_wan(two_denoisers=True)


BUILDERS: dict[str, Callable[[], Any]] = {
    "tiny-flux": tiny_flux,
    "tiny-sd3": tiny_sd3,
    "tiny-sdxl": tiny_sdxl,
    "tiny-sd15": tiny_sd15,
    "tiny-pixart": tiny_pixart,
    "tiny-sana": tiny_sana,
    "tiny-wan": tiny_wan21,
    "tiny-wan2.2": tiny_wan22,
    "tiny-ltx": tiny_ltx,
    "tiny-cogvideox": tiny_cogvideox,
}
# Registry facts of tiny builds that differ from the defaults (family from the name, 32 px, an image).
FAMILIES = {"tiny-wan": "wan", "tiny-wan2.2": "wan"}
SIZES = {"tiny-wan": 16, "tiny-wan2.2": 16, "tiny-cogvideox": 16}
FRAMES = {"tiny-wan": 5, "tiny-wan2.2": 5, "tiny-ltx": 9, "tiny-cogvideox": 9}

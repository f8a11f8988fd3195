"""Train the default model: a small AutoencoderKL plus a class-conditional DiT on the shapes data.

Saved with ``DiTPipeline.save_pretrained`` (fp16 safetensors) so the stock
``DiTPipeline.from_pretrained`` loads it. On one H100 it takes about 10 minutes:

    python -m training.train_shapes_dit --out tmpdiff/weights/shapes-dit --vae-seconds 90 --dit-seconds 420
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from training.shapes import LABELS, sample

SEED = 0


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1, norm_num_groups=16, sample_size=64,
    )


def build_dit():
    from diffusers import DiTTransformer2DModel

    # 256 wide (4 heads of 64), 6 blocks, 2x2 patches of a 16x16x4 latent: 64 tokens.
    return DiTTransformer2DModel(
        num_attention_heads=4, attention_head_dim=64, in_channels=4, out_channels=4, num_layers=6,
        sample_size=16, patch_size=2, num_embeds_ada_norm=1000, norm_num_groups=16,
    )


def train_vae(vae, seconds: float, batch: int, device: str, g: torch.Generator) -> dict:
    opt = torch.optim.AdamW(vae.parameters(), lr=3e-4, weight_decay=0.0)
    vae.train()
    start, step = time.time(), 0
    while time.time() - start < seconds:
        x, _ = sample(batch, g, device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(recon.float(), x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 500 == 0:
            print(f"vae step {step} loss {loss.item():.5f} {time.time() - start:.0f}s", flush=True)
    vae.eval()
    return {"vae_steps": step, "vae_final_mse": float(loss.item())}


@torch.no_grad()
def latent_scale(vae, device: str, g: torch.Generator) -> float:
    x, _ = sample(512, g, device)
    return float(1.0 / vae.encode(x).latent_dist.mean.std())


def train_dit(dit, vae, scale: float, seconds: float, batch: int, device: str, g: torch.Generator) -> tuple:
    from diffusers import DDPMScheduler

    noise_schedule = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    alphas = noise_schedule.alphas_cumprod.to(device)
    ema = copy.deepcopy(dit).eval().requires_grad_(False)
    opt = torch.optim.AdamW(dit.parameters(), lr=3e-4, weight_decay=0.0)
    dit.train()
    start, step = time.time(), 0
    while time.time() - start < seconds:
        x, labels = sample(batch, g, device)
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.mean * scale
        t = torch.randint(0, 1000, (batch,), device=device, generator=None)
        noise = torch.randn_like(latents)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            pred = dit(noisy, timestep=t, class_labels=labels).sample  # labels dropped 10% for CFG
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(0.9995, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), dit.parameters(), strict=True):
                pe.lerp_(p, 1 - decay)
        step += 1
        if step % 1000 == 0:
            print(f"dit step {step} loss {loss.item():.5f} {time.time() - start:.0f}s", flush=True)
    return ema, noise_schedule, {"dit_steps": step, "dit_final_loss": float(loss.item())}


def save(out: Path, ema, vae, noise_schedule, scale: float, info: dict) -> None:
    from diffusers import DiTPipeline, DPMSolverMultistepScheduler

    vae.register_to_config(scaling_factor=scale)
    scheduler = DPMSolverMultistepScheduler.from_config(noise_schedule.config)
    pipe = DiTPipeline(transformer=ema.to(torch.float16).cpu(), vae=vae.to(torch.float16).cpu(), scheduler=scheduler)
    pipe.save_pretrained(out, safe_serialization=True)
    index = json.loads((out / "model_index.json").read_text())
    index["id2label"] = {str(i): label for i, label in enumerate(LABELS)}
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("tmpdiff/weights/shapes-dit"))
    parser.add_argument("--vae-seconds", type=float, default=90)
    parser.add_argument("--dit-seconds", type=float, default=420)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(SEED)
    g = torch.Generator(device=device).manual_seed(SEED)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    started = time.time()
    vae = build_vae().to(device)
    info = train_vae(vae, args.vae_seconds, 64, device, g)
    scale = latent_scale(vae, device, g)
    dit = build_dit().to(device)
    ema, noise_schedule, dit_info = train_dit(dit, vae, scale, args.dit_seconds, args.batch, device, g)
    info.update(dit_info)
    info.update({
        "seed": SEED, "batch": args.batch, "latent_scale": scale, "device": torch.cuda.get_device_name()
        if device == "cuda" else "cpu", "torch": torch.__version__, "train_seconds": round(time.time() - started, 1),
        "labels": list(LABELS),
    })
    save(args.out, ema, vae, noise_schedule, scale, info)
    print(json.dumps(info))


if __name__ == "__main__":
    main()

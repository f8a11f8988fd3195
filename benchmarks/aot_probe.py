"""Where does AOTInductor break on this machine? Each case runs in its own process.

    python benchmarks/aot_probe.py [--device cuda]

Cases, from the smallest: a Linear layer; a Linear whose weight is an input; one FLUX double
block (bf16, weights as inputs, as ``tmpdiff.variants.aot`` does); the same loaded in a fresh process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

CASES = ["linear", "linear_cpu", "linear_single_threaded", "linear_embedded_kernels", "linear_weight_input",
         "flux_block_bf16", "flux_block_bf16_load"]


def case(name: str, folder: str, device: str) -> None:
    import torch
    from torch import nn
    from torch._inductor import aoti_compile_and_package, aoti_load_package

    torch.manual_seed(0)
    package = os.path.join(folder, name.removesuffix("_load") + ".pt2")
    if name == "linear_cpu":
        device = "cpu"
    if name.startswith("linear"):
        layer = nn.Linear(64, 64, device=device, dtype=torch.bfloat16)
        x = torch.randn(8, 64, device=device, dtype=torch.bfloat16)
        if name != "linear_weight_input":
            module, inputs, expected = layer, (x,), layer(x)
        else:
            class F(nn.Module):
                def forward(self, w: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
                    return nn.functional.linear(x, w, b)
            module, inputs, expected = F(), (layer.weight.detach(), layer.bias.detach(), x), layer(x)
        exported = torch.export.export(module, inputs)
        configs = {"aot_inductor.embed_kernel_binary": True} if name == "linear_embedded_kernels" else {}
        aoti_compile_and_package(exported, package_path=package, inductor_configs=configs)
        print(name, "compiled", flush=True)
        out = aoti_load_package(package, run_single_threaded=name == "linear_single_threaded")(*inputs)
        print(name, "max abs diff", (out - expected).abs().max().item(), flush=True)
        return
    from diffusers.models.transformers.transformer_flux import FluxTransformerBlock

    from tmpdiff.variants.aot import _Functional, _weights
    block = FluxTransformerBlock(dim=256, num_attention_heads=4, attention_head_dim=64).to(device, torch.bfloat16)
    hidden = torch.randn(1, 64, 256, device=device, dtype=torch.bfloat16)
    encoder = torch.randn(1, 16, 256, device=device, dtype=torch.bfloat16)
    temb = torch.randn(1, 256, device=device, dtype=torch.bfloat16)
    kwargs = {"hidden_states": hidden, "encoder_hidden_states": encoder, "temb": temb}
    with torch.no_grad():
        expected = block(**kwargs)
        if not name.endswith("_load"):
            exported = torch.export.export(_Functional(block), (_weights(block),), kwargs, strict=False)
            aoti_compile_and_package(exported, package_path=package)
            print(name, "compiled", flush=True)
        runner = aoti_load_package(package)
        print(name, "loaded", flush=True)
        out = runner(_weights(block), **kwargs)
    diffs = [(a - b).abs().max().item() for a, b in zip(out, expected, strict=True)]
    print(name, "max abs diff", diffs, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--case")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--folder")
    args = parser.parse_args()
    if args.case:
        case(args.case, args.folder, args.device)
        return
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "CUDA_HOME", os.environ.get("CUDA_HOME"),
          "nvcc", shutil.which("nvcc"), "cxx", shutil.which("g++"), flush=True)
    folder = tempfile.mkdtemp(prefix="aot_probe_")
    for name in args.cases.split(","):
        done = subprocess.run([sys.executable, "-X", "faulthandler", __file__, "--case", name, "--folder", folder,
                               "--device", args.device], capture_output=True, text=True, timeout=300)
        tail = (done.stdout + done.stderr).strip().splitlines()
        print(f"== {name}: exit {done.returncode}", *tail[-25:], sep="\n", flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Reproduce every table of benchmarks/RESULTS.md on one CUDA GPU (about 35 minutes on an H200).
set -euo pipefail
cd "$(dirname "$0")/.."
# Run from a fresh clone as well as after `pip install -e .`: the checkout's packages come first.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
device=$(python3 -c "import torch; print(torch.cuda.get_device_name().split()[-1].lower())")
python3 benchmarks/step_costs.py --arch flux --compiled bf16,fp8,int8 --eager bf16,fp8,int8,int8wo,fp8wo,int4wo \
    --out "benchmarks/results/flux_steps_${device}.json"
python3 benchmarks/step_costs.py --arch sd3 --compiled bf16,fp8 --eager bf16,fp8 --out "benchmarks/results/sd3_steps_${device}.json"
python3 benchmarks/step_costs.py --arch sdxl --compiled fp16,fp8 --eager fp16,fp8 --out "benchmarks/results/sdxl_steps_${device}.json"
python3 -m tmpdiff generate --model flux-dev-random --schedule "bf16*4,fp8*20,bf16*4" --no-cache \
    --out "benchmarks/results/flux_random_${device}.png"
python3 benchmarks/step_costs.py --arch flux --compiled bf16,fp8 --eager "" --out "benchmarks/results/flux_switching_${device}.json"
python3 benchmarks/end_to_end.py --out "benchmarks/results/end_to_end_${device}.json"
python3 benchmarks/first_image.py --out "benchmarks/results/first_image_${device}.json"
python3 benchmarks/memory.py --budgets 24,16,12 --out "benchmarks/results/memory_${device}.json"
python3 benchmarks/report.py benchmarks/results/*_"${device}".json > benchmarks/RESULTS.md

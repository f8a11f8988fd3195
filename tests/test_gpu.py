"""Real-kernel paths: run on an H100/H200 (skipped cleanly without CUDA)."""

import numpy as np
import pytest
import torch

from tmpdiff import Status, apply_schedule, available_precisions, get_model, load_pipeline, precision_status
from tmpdiff.switching.switch import denoiser_of

pytestmark = pytest.mark.gpu
STEPS = 4


@pytest.fixture(scope="module")
def flux():
    pipe = load_pipeline("tiny-flux", "cuda")
    return pipe.to(torch.bfloat16)


def run(pipe):
    kwargs = get_model("tiny-flux").call_kwargs("a photo of a red cat", steps=STEPS, seed=0)
    with torch.no_grad():
        return pipe(**kwargs, output_type="np").images[0]


def test_bf16_reference_on_gpu_is_the_stock_pipeline(flux):
    stock = run(flux)
    with apply_schedule(flux, f"bf16*{STEPS}", compile=False) as handle:
        ours = run(flux)
    assert np.array_equal(stock, ours)
    assert handle.steps_run == ["bf16"] * STEPS


def test_fp8_runs_real_torchao_kernels_on_hopper(flux):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs compute capability 8.9+")
    assert precision_status("fp8", "cuda").status is Status.REAL
    with apply_schedule(flux, f"bf16,fp8*{STEPS - 1}", compile=False) as handle:
        image = run(flux)
    weights = [type(m.weight).__name__ for m in handle.variants["fp8"].modules() if isinstance(m, torch.nn.Linear)]
    assert "Float8Tensor" in weights
    assert np.isfinite(image).all()
    assert all(type(p).__name__ == "Parameter" for p in denoiser_of(flux).parameters())


def test_compiled_variants_match_eager(flux):
    with apply_schedule(flux, f"bf16*{STEPS}", compile=False):
        eager = run(flux)
    with apply_schedule(flux, f"bf16*{STEPS}", compile=True) as handle:
        compiled = run(flux)
    assert handle.compiled
    assert np.abs(eager - compiled).mean() < 0.02


def test_a_second_process_loads_compiled_variants_without_recompiling(tmp_path):
    import json
    import subprocess
    import sys

    from conftest import ROOT

    names = "bf16,fp8" if torch.cuda.get_device_capability() >= (8, 9) else "bf16"
    command = [sys.executable, "-m", "tmpdiff", "--device", "cuda", "warmup", "--model", "tiny-flux",
               "--precisions", names, "--cache-dir", str(tmp_path)]
    runs = [json.loads(subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
                       .stdout.splitlines()[-1])["variants"] for _ in range(2)]
    assert all(row["inductor_compilations"] > 0 and not row["from_cache"] for row in runs[0])
    assert all(row["inductor_compilations"] == 0 and row["from_cache"] for row in runs[1])


def test_aot_variants_match_compiled_ones(flux, tmp_path):
    from tmpdiff.variants.aot import AotWarning, loading_works
    from tmpdiff.variants.compile_cache import CompileCache

    low = "fp8" if torch.cuda.get_device_capability() >= (8, 9) else "int8"
    schedule = f"bf16,{low}*{STEPS - 1}"
    works, why = loading_works(torch.device("cuda"), tmp_path)
    if not works:  # the product must fall back to torch.compile here, not crash
        with pytest.warns(AotWarning, match="torch.compile instead"), \
                apply_schedule(flux, schedule, compile="aot", cache=CompileCache(tmp_path)) as handle:
            run(flux)
        assert handle.compiled and handle.steps_run == ["bf16"] + [low] * (STEPS - 1)
        pytest.skip(f"fell back to torch.compile as it should; AoT itself is untestable here: {why}")
    with apply_schedule(flux, schedule, compile=True):
        compiled = run(flux)
    with apply_schedule(flux, schedule, compile="aot", cache=CompileCache(tmp_path)) as handle:
        ahead = run(flux)
    assert handle.steps_run == ["bf16"] + [low] * (STEPS - 1)
    assert handle.mode.value == "aot" and {b.precision for b in handle.builds} == {"bf16", low}
    assert np.abs(compiled - ahead).mean() < 0.02


def test_batched_calibration_images_on_gpu_make_half_the_calls_and_match_one_by_one():
    from tmpdiff.engine.runner import Engine
    from tmpdiff.engine.settings import RunSettings
    from tmpdiff.measure.evaluator import Evaluator

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs compute capability 8.9+")
    settings = [RunSettings(model="flux-dev-random", prompt=p, seed=s, steps=STEPS, size=256)
                for p, s in (("a red fox", 0), ("a blue car", 1))]
    schedule = f"bf16,fp8*{STEPS - 2},bf16"
    engine = Engine("cuda", compile=False)  # one copy of the weights for both ways
    engine.warm(settings[0], "fp8")
    alone, batched = Evaluator(engine, predict=False), Evaluator(engine, predict=False)
    batched.batch_size = 2
    before = engine.calls["denoiser"]
    one = alone.evaluate_all(settings, schedule)
    middle = engine.calls["denoiser"]
    two = batched.evaluate_all(settings, schedule)
    assert (engine.calls["denoiser"] - middle) * 2 == middle - before
    for a, b in zip(one, two, strict=True):
        assert b.record.steps_run == a.record.steps_run == ["bf16"] + ["fp8"] * (STEPS - 2) + ["bf16"]
        assert abs(a.record.ssim - b.record.ssim) < 0.02
    engine.close()  # the FLUX-sized pipeline's ~40 GiB handed back before the next test's budget


def test_fp8a8_runs_flashattention3_fp8_close_to_fp8_linears_alone(flux):
    from tmpdiff.steps import attention

    works, why = attention.fp8_attention_available()
    if not works:
        pytest.skip(why)
    assert precision_status("fp8a8", "cuda").status is Status.REAL
    q, k, v = (torch.randn(1, 1024, 8, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(*(x.float().transpose(1, 2) for x in (q, k, v)))
    real = attention.fp8_attention(q, k, v).float().transpose(1, 2)
    simulated = attention.simulate_fp8_attention(*(x.transpose(1, 2) for x in (q, k, v))).float()
    rms = ref.pow(2).mean().sqrt()
    assert 0 < float((real - ref).pow(2).mean().sqrt() / rms) < 0.08
    assert float((real - simulated).pow(2).mean().sqrt() / rms) < 0.05  # the CPU's simulation is the kernel's numerics
    images = {}
    for compile in (False, True):
        for low in ("fp8", "fp8a8"):
            with apply_schedule(flux, f"bf16,{low}*{STEPS - 2},bf16", compile=compile) as handle:
                images[low, compile] = run(flux)
            assert handle.steps_run[1] == low
    for compile in (False, True):
        difference = np.abs(images["fp8a8", compile] - images["fp8", compile]).mean()
        assert 0 < difference < 0.1, (compile, difference)  # attention did change, and only a little
    assert np.abs(images["fp8a8", True] - images["fp8a8", False]).mean() < 0.02


def test_every_real_rung_switches_per_step_in_one_run_without_recompiling(flux):
    from torch._dynamo.utils import counters

    rungs = [p.name for p in available_precisions("cuda") if p.status is Status.REAL and p.name != "fp32"]
    computing = [r for r in rungs if r not in ("skip", "extrap")]
    steps = ["bf16"] + [rungs[i % len(rungs)] for i in range(27)]  # every rung, several times, in one 28-step run

    def image():  # the call's generator is consumed by a run: a fresh one each time
        kwargs = get_model("tiny-flux").call_kwargs("a photo of a red cat", steps=28, seed=0)
        return flux(**kwargs, output_type="np").images[0]

    with apply_schedule(flux, ",".join(steps), compile=True) as handle, torch.no_grad():
        first = image()
    assert handle.steps_run == steps
    compiled = counters["stats"]["unique_graphs"]
    with apply_schedule(flux, ",".join(steps), compile=True), torch.no_grad():
        second = image()
    assert counters["stats"]["unique_graphs"] == compiled  # the second run switched between compiled variants only
    assert np.isfinite(first).all() and np.array_equal(first, second)
    assert set(computing) <= set(handle.variants)


def test_cuda_graphs_replay_each_compiled_variant_with_the_image_of_plain_compiled_calls(flux):
    from tmpdiff.variants.bank import Mode, bank_for

    low = "fp8" if torch.cuda.get_device_capability() >= (8, 9) else "bf16"
    schedule = f"bf16,{low}*{STEPS - 2},bf16"
    with apply_schedule(flux, schedule, compile=True, cuda_graphs=False):
        plain = run(flux)
    graphs = bank_for(denoiser_of(flux)).graphs
    with apply_schedule(flux, schedule, compile=True, cuda_graphs=True) as first:
        graphed = run(flux)
    with apply_schedule(flux, schedule, compile=True, cuda_graphs=True) as second:
        again = run(flux)
    assert not graphs.refused, graphs.refused
    for name in {"bf16", low}:  # one capture a variant, reused by the second run
        assert graphs.captures((name, Mode.COMPILED)) == 1
    assert not second.build_seconds  # nothing built or captured the second time
    assert first.steps_run == second.steps_run == schedule.replace(f"{low}*{STEPS - 2}", ",".join([low] * (STEPS - 2))
                                                                   ).split(",")
    assert np.abs(plain - graphed).max() < 2e-3  # the same kernels, replayed
    assert np.array_equal(graphed, again)


def test_the_mixed_flux_schedule_runs_within_24_gib_and_gives_the_unbudgeted_image():
    """The target schedule on a FLUX.1-dev-sized pipeline under a 24 GiB allocator cap (the real thing on a larger
    GPU): its peak stays within the budget, and eager its image is bit for bit the unbudgeted one."""
    from tmpdiff.engine.runner import Engine, telling_plans_to
    from tmpdiff.engine.settings import RunSettings

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs compute capability 8.9+")
    settings = RunSettings(model="flux-dev-random", steps=28, size=1024)
    schedule = "bf16*4,fp8*20,bf16*4"
    budgeted = Engine("cuda", compile=False, gpu_memory=24)
    plans = []
    with telling_plans_to(lambda model, line: plans.append(line)):
        within = budgeted.generate(settings, schedule)
    assert within.memory is not None and within.memory.peak_bytes <= 24 << 30, within.memory
    assert within.memory.pinned_bytes > 0 and within.memory.host_peak_bytes > within.memory.pinned_bytes  # host too
    assert plans and "streamed" in plans[-1] and within.steps_run == ["bf16"] * 4 + ["fp8"] * 20 + ["bf16"] * 4
    image = np.asarray(within.image)
    budgeted.close()
    del budgeted, within
    torch.cuda.empty_cache()
    free = Engine("cuda", compile=False)
    free.set_gpu_memory(None)  # all of the GPU, the cap lifted
    unbudgeted = free.generate(settings, schedule)
    assert unbudgeted.memory.peak_bytes > 24 << 30  # the same image needs more where everything stays resident
    assert np.array_equal(np.asarray(unbudgeted.image), image)


def test_a_streamed_blocks_host_buffer_is_page_locked_at_exactly_its_bytes():
    """``cudaHostRegister`` in place: pinned (copies from it are asynchronous), no power-of-two rounding by the
    caching host allocator, and given back when the block is made resident."""
    from tmpdiff.memory.streaming import ALIGN, BlockStreamer

    before = torch.cuda.host_memory_stats().get("allocated_bytes.current", 0)
    block = torch.nn.Sequential(torch.nn.Linear(1000, 3000), torch.nn.Linear(3000, 1000)).cuda().to(torch.bfloat16)
    x = torch.randn(8, 1000, device="cuda", dtype=torch.bfloat16)
    want = block(x)
    streamer = BlockStreamer([block], torch.device("cuda"))
    streamer.stream([0])
    held = streamer._streamed[0].buffer
    assert held is not None and held.pinned and all(copy.is_pinned() for copy in held.copies)
    assert held.nbytes == sum(-(-p.numel() * 2 // ALIGN) * ALIGN for p in block.parameters())
    assert torch.cuda.host_memory_stats().get("allocated_bytes.current", 0) == before  # not the caching allocator
    assert all(p.device.type == "cpu" for p in block.parameters())
    assert torch.equal(block(x), want)  # onloaded on the side stream for the call, offloaded after
    streamer.make_resident([0])
    assert not held.pinned and all(p.device.type == "cuda" for p in block.parameters())
    assert torch.equal(block(x), want)


def test_a_streamed_checkpoint_block_is_page_locked_where_the_file_maps_it_without_a_copy(tmp_path):
    """Registered read-only in place: copies from the checkpoint's pages are asynchronous and the process gains no
    anonymous copy of the weights (a copy-on-write copy would be one); made resident, the pages are let go."""
    from safetensors.torch import load_file, save_file

    from tmpdiff.memory.meter import status_bytes
    from tmpdiff.memory.streaming import BlockStreamer, checkpoint_origins

    def rss_anon() -> int:
        return status_bytes(["RssAnon"])["RssAnon"]

    shapes = {f"{i}.weight": (4096, 4096) for i in range(4)}  # 4 x 32 MiB of bf16 in one file
    save_file({k: torch.randn(s, dtype=torch.bfloat16) for k, s in shapes.items()}, tmp_path / "w.safetensors")
    state = load_file(tmp_path / "w.safetensors")  # memory-mapped, as from_pretrained loads a checkpoint
    blocks = [torch.nn.Linear(4096, 4096, bias=False, dtype=torch.bfloat16) for _ in range(4)]
    for i, block in enumerate(blocks):
        block.weight = torch.nn.Parameter(state[f"{i}.weight"], requires_grad=False)
    origins = checkpoint_origins(blocks)
    assert len(origins) == 4
    x = torch.randn(8, 4096, device="cuda", dtype=torch.bfloat16)
    want = [torch.nn.functional.linear(x, b.weight.cuda()) for b in blocks]
    model = torch.nn.Sequential(*blocks)
    before = rss_anon()
    streamer = BlockStreamer(blocks, torch.device("cuda"), origins=origins)
    streamer.pin_in_place = True  # TMPDIFF_PIN_IN_PLACE=1
    streamer.stream(range(4))
    in_place = [b for b in blocks if b.weight.data_ptr() == origins[id(b.weight)].data_ptr()]
    assert len(in_place) >= 2 and all(b.weight.is_pinned() for b in blocks)  # neighbours sharing a page: copied
    assert streamer.pinned_bytes() >= 4 * 32 << 20 and streamer.pinned_copy_bytes() <= 2 * 32 << 20
    for block, expected in zip(model, want, strict=True):
        assert torch.equal(block(x), expected)
    grown = rss_anon() - before - streamer.pinned_copy_bytes()
    assert grown < 32 << 20, f"{grown} bytes more: the pages were copied (copy-on-write?) instead of pinned in place"
    streamer.make_resident(range(4))
    assert streamer.pinned_bytes() == 0 and not state["0.weight"].is_pinned()
    assert torch.equal(model[0](x), want[0])

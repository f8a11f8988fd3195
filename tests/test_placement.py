"""Memory as a first-class axis: the placement plan's decisions from sizes and a budget (pure logic), streamed blocks
that give the resident image bit for bit, and the memory each evaluation reports."""

from pathlib import Path

import numpy as np
import pytest
import torch

from tmpdiff.errors import FieldError
from tmpdiff.memory.placement import GIB, Part, Sizes, plan_placement

MIB = 1 << 20


def blocks(prefix: int, count: int, size: int) -> tuple[dict[int, int], ...]:
    return tuple({prefix + i: size} for i in range(count))


def flux_like(working: int = 2 * GIB) -> Sizes:
    """A FLUX-sized pipeline in round numbers: a bf16 reference of 20 blocks of 1 GiB (its fp8 variant quantizes
    half of each block to 0.25 GiB and shares the rest), 10 GiB of encoders in 20 blocks, a small VAE."""
    shared = {1000 + i: GIB // 2 for i in range(20)}  # the half each fp8 block shares with the reference
    bf16 = tuple({2000 + i: GIB // 2, 1000 + i: GIB // 2} for i in range(20))
    fp8 = tuple({3000 + i: GIB // 4, 1000 + i: GIB // 2} for i in range(20))
    assert sum(shared.values()) == 10 * GIB
    return Sizes({
        "bf16": Part("bf16", "variant", {1: 200 * MIB}, bf16),
        "fp8": Part("fp8", "variant", {1: 200 * MIB}, fp8),
        "text_encoder_2": Part("text_encoder_2", "encoder", {4: 250 * MIB}, blocks(5000, 20, GIB // 2)),
        "vae": Part("vae", "vae", {6: 160 * MIB}),
    }, working)


IN_USE = ["bf16", "fp8", "text_encoder_2", "vae"]


def with_residual(sizes: Sizes) -> Sizes:
    """``flux_like`` with an ``fp8r`` variant: fp8's tensors (shared, not copied) plus a residual of fp8's size."""
    fp8r = Part("fp8r", "variant", {1: 200 * MIB}, tuple({**block, 4000 + i: GIB // 4}
                                                       for i, block in enumerate(sizes.parts["fp8"].blocks)))
    return Sizes({**sizes.parts, "fp8r": fp8r}, sizes.working)


def test_without_a_budget_or_with_room_everything_stays_on_the_gpu():
    sizes = flux_like()
    for budget in (None, 64 * GIB):
        plan = plan_placement(sizes, IN_USE, budget)
        assert not any(plan.streams(name) for name in IN_USE)
        assert plan.resident["bf16"] == tuple(range(20))
    assert plan_placement(sizes, IN_USE, None).line() == "no budget: everything on the GPU"
    assert "bf16 resident" in plan_placement(sizes, IN_USE, 64 * GIB).line()


def test_a_tight_budget_streams_the_encoders_first_then_fills_the_cheapest_variant_then_part_of_the_next():
    plan = plan_placement(flux_like(), IN_USE, 24 * GIB)
    assert plan.streams("text_encoder_2")  # runs once per prompt: the first to go
    assert not plan.streams("fp8")  # the cheapest variant, wholly resident
    assert plan.streams("bf16") and 0 < len(plan.resident["bf16"]) < 20  # what is left: part of the reference
    assert plan.peak <= 24 * GIB
    # A tensor fp8 shares with the reference is on the GPU once, and never streamed by the reference.
    assert plan.streamed_bytes["bf16"] == (20 - len(plan.resident["bf16"])) * GIB // 2
    assert "bf16" in plan.line() and "blocks resident" in plan.line() and "GiB streamed a call" in plan.line()


def test_a_bigger_budget_streams_fewer_bytes_a_step():
    budgets = (16, 20, 24, 28)
    streamed = [plan_placement(flux_like(), IN_USE, budget * GIB).streamed_bytes["bf16"] for budget in budgets]
    assert streamed == sorted(streamed, reverse=True) and streamed[0] > streamed[-1]
    assert all(plan_placement(flux_like(), IN_USE, b * GIB).peak <= b * GIB for b in budgets)


def test_at_a_budget_below_the_variants_the_cheapest_one_streams_too():
    plan = plan_placement(flux_like(), IN_USE, 12 * GIB)
    assert plan.streams("bf16") and plan.streams("fp8") and plan.peak <= 12 * GIB


def test_a_budget_nothing_fits_in_is_refused_before_any_work_saying_what_would():
    with pytest.raises(FieldError, match=r"needs at least [0-9.]+ GiB") as refused:
        plan_placement(flux_like(working=4 * GIB), IN_USE, 4 * GIB)
    assert refused.value.field == "gpu_memory"
    least = float(str(refused.value).split("needs at least ")[1].split()[0])
    plan = plan_placement(flux_like(working=4 * GIB), IN_USE, int((least + 0.1) * GIB))  # what it said fits
    assert plan.streams("bf16") and plan.streams("fp8")


@pytest.mark.parametrize("budget", range(8, 46, 2))
def test_with_the_residual_rung_a_schedule_of_fewer_16_bit_steps_never_streams_more_than_the_reference(budget):
    """Fair plans by the plan's own accounting: under one budget, ``fp8r*4,fp8*20,fp8r*4`` (16-bit quality at its
    edges from the fp8 copy plus a residual) never streams more bytes an image than ``bf16*28`` planned alone, from
    8 GiB to everything resident; the bf16 reference, which that schedule does not read, neither streams during a
    call nor takes room from what it reads. (With bf16 edges it does stream more where the budget holds the
    reference but not two variants beside each other: the plan line says so.)"""
    sizes = with_residual(flux_like())
    alone = plan_placement(sizes, ["bf16", "text_encoder_2", "vae"], budget * GIB,
                           {"bf16": 28, "text_encoder_2": 1, "vae": 1})
    reads = {"fp8r": 8, "fp8": 20, "text_encoder_2": 1, "vae": 1, "bf16": 0}
    mixed = plan_placement(sizes, list(reads), budget * GIB, reads)
    assert mixed.per_image <= alone.per_image and mixed.peak <= budget * GIB
    assert mixed.per_image == mixed.streamed_per_image(reads)
    assert mixed.host_bytes == mixed.streamed_bytes["fp8"] + mixed.streamed_bytes["fp8r"] + mixed.streamed_bytes["vae"]
    # the unread reference stays in pageable memory (its checkpoint's pages): never page-locked
    if mixed.streams("fp8") or mixed.streams("fp8r") or mixed.streams("text_encoder_2"):
        bf16_only = {t for block in sizes.parts["bf16"].blocks for t in block} - \
            {t for block in sizes.parts["fp8"].blocks for t in block}
        assert not bf16_only & mixed.kept  # room goes to what is read first


def test_a_plan_whose_streamed_blocks_need_more_host_memory_than_allowed_is_refused_before_any_work():
    """A variant's streamed blocks live page-locked in host memory (an encoder's stream from pageable memory): the
    plan counts them and refuses, in one line naming both budgets, what the host budget cannot hold; a host budget
    that holds them changes nothing."""
    free = plan_placement(flux_like(), IN_USE, 16 * GIB)
    assert free.streams("text_encoder_2") and free.streams("bf16")
    assert free.host_bytes == sum(v for k, v in free.streamed_bytes.items() if k != "text_encoder_2") > 0
    assert f"{free.host_bytes / GIB:.1f} GiB pinned in host memory" in free.line()
    assert plan_placement(flux_like(), IN_USE, 16 * GIB, host=free.host_bytes) == free
    with pytest.raises(FieldError) as refused:
        plan_placement(flux_like(), IN_USE, 16 * GIB, host=free.host_bytes - GIB)
    told = refused.value.worded(lambda field: "--" + field.replace("_", "-"))
    assert refused.value.field == "host_memory" and "\n" not in told
    assert f"streams {free.host_bytes / GIB:.1f} GiB" in told and "--host-memory" in told and "--gpu-memory" in told
    assert plan_placement(flux_like(), IN_USE, None, host=0).host_bytes == 0  # nothing streams without a budget


def test_the_host_budget_is_validated_up_front_and_defaults_to_what_the_system_has():
    from tmpdiff.memory.budget import HOST_MARGIN, available_host_bytes, resolve_host_memory

    assert resolve_host_memory(None) is None and resolve_host_memory(12) == 12 * GIB
    for bad in (0, -3, "many", float("nan")):
        with pytest.raises(FieldError, match="positive number of GiB"):
            resolve_host_memory(bad)
    available = available_host_bytes()
    if Path("/proc/meminfo").exists():
        total = int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal")).split()[1]) * 1024
        assert available is not None and 0 <= available <= total - HOST_MARGIN


def test_a_plan_records_itself_in_one_line_and_as_data():
    data = plan_placement(flux_like(), IN_USE, 24 * GIB).to_dict()
    assert data["budget_gib"] == 24.0 and data["streamed_gib"]["text_encoder_2"] > 0
    assert data["line"].startswith("budget 24.0 GiB:")


def tiny_flux_pair():
    from tmpdiff import load_pipeline

    return load_pipeline("tiny-flux"), load_pipeline("tiny-flux")


def test_streamed_blocks_give_the_resident_image_bit_for_bit_and_live_on_the_host_between_calls():
    from tmpdiff.memory.streaming import BlockStreamer
    from tmpdiff.variants.copies import find_blocks

    resident, streamed = tiny_flux_pair()
    blocks = find_blocks(streamed.transformer)
    assert len(blocks) == 2 and all(type(b).__name__.startswith("Flux") for b in blocks)
    streamer = BlockStreamer(blocks, torch.device("cpu"))
    held = {id(p): p.data_ptr() for p in blocks[1].parameters()}
    streamer.stream([1])
    assert streamer.streamed == [1] and streamer.streamed_bytes() == sum(p.numel() * 4 for p in blocks[1].parameters())
    assert all(p.data_ptr() != held[id(p)] for p in blocks[1].parameters())  # pointed at the host copies
    kwargs = {"prompt": "a red cat", "num_inference_steps": 2, "height": 32, "width": 32, "max_sequence_length": 32}
    want = resident(**kwargs, generator=torch.Generator().manual_seed(0), output_type="np").images
    got = streamed(**kwargs, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert (want == got).all()
    assert streamer.onloads == 2  # block 1 came on for each of the two denoiser calls, and went back after
    streamer.remove()
    assert streamer.streamed == []


def test_a_pageable_streamer_streams_host_blocks_from_where_they_are_without_a_copy():
    """An encoder (once a prompt) streams from its checkpoint's pages: no host copy, nothing page-locked."""
    from tmpdiff.memory.streaming import BlockStreamer

    blocks = [torch.nn.Linear(64, 64), torch.nn.Linear(64, 64)]
    where = [p.data_ptr() for p in blocks[1].parameters()]
    x = torch.randn(2, 64)
    want = blocks[1](blocks[0](x))
    streamer = BlockStreamer(blocks, torch.device("cpu"))
    streamer.stream([1], pageable=True)
    assert streamer.streamed_bytes() == 64 * 64 * 4 + 64 * 4 and streamer.pinned_bytes() == 0
    assert [p.data_ptr() for p in blocks[1].parameters()] == where  # its own memory, not a copy
    assert torch.equal(blocks[1](blocks[0](x)), want) and streamer.onloads == 1


def test_a_streamed_block_lives_in_one_host_buffer_of_exactly_its_bytes_with_strides_kept():
    """Host copies share one buffer a block (page-locked in place on CUDA, never rounded up to a power of two), each
    tensor aligned, non-contiguous ones (a transposed weight) keeping their strides; made resident, it is freed."""
    from tmpdiff.memory.streaming import ALIGN, BlockStreamer, HostBuffer

    sources = [torch.randn(3, 5), torch.randn(7, 4).t(), torch.arange(9, dtype=torch.int8), torch.randn(1, 4)]
    sources.append(sources[-1].expand(1000, 4))  # an expanded view: its 4000 values are written out
    buffer = HostBuffer(sources, pinned=False)
    assert buffer.nbytes == 4 * ALIGN + -(-16000 // ALIGN) * ALIGN and not buffer.pinned
    for source, copy in zip(sources[:4], buffer.copies, strict=False):
        assert torch.equal(copy, source) and copy.stride() == source.stride() and copy.dtype == source.dtype
    assert torch.equal(buffer.copies[-1], sources[-1]) and buffer.copies[-1].is_contiguous()
    storage = buffer.memory.untyped_storage().data_ptr()
    assert all(copy.untyped_storage().data_ptr() == storage for copy in buffer.copies)
    block = torch.nn.Sequential(torch.nn.Linear(300, 200), torch.nn.Linear(200, 100))
    values = [p.detach().clone() for p in block.parameters()]
    streamer = BlockStreamer([block], torch.device("cpu"))
    streamer.stream([0])
    held = streamer._streamed[0].buffer
    assert held is not None and held.nbytes == sum(-(-p.numel() * 4 // ALIGN) * ALIGN for p in block.parameters())
    assert streamer.streamed_bytes() == sum(p.numel() * 4 for p in block.parameters())  # what a call copies
    streamer.make_resident([0])
    assert held.copies == [] and held.memory.numel() == 0
    assert all(torch.equal(p, v) for p, v in zip(block.parameters(), values, strict=True))


def test_a_streamed_quantized_variant_keeps_its_values():
    """Tensor subclasses (torchao's quantized weights) stream through their inner tensors."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    from tmpdiff.memory.streaming import BlockStreamer
    from tmpdiff.variants.copies import tensor_bytes

    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
    blocks = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(64, 64)) for _ in range(2)])
    quantize_(blocks, Int8WeightOnlyConfig())
    x = torch.randn(4, 64)
    want = blocks[1](blocks[0](x))
    streamer = BlockStreamer(list(blocks), torch.device("cpu"))
    streamer.stream([0, 1])
    assert streamer.streamed_bytes() == sum(tensor_bytes(p) for p in blocks.parameters())
    assert torch.equal(blocks[1](blocks[0](x)), want)
    del model


def test_every_evaluation_carries_its_peak_memory_and_the_store_keeps_it(tmp_path):
    from conftest import make_comparison

    from tmpdiff.cache import Cache
    from tmpdiff.ui import views

    store = Cache(tmp_path / "c.sqlite")
    comparison = make_comparison(store=store)
    record = comparison.evaluation.record
    assert record.peak_bytes > 0 and record.memory.where in ("host", "host-process")  # no GPU here
    assert comparison.summary()["peak_gib"] == round(record.peak_bytes / 2**30, 2)
    assert record.memory.host_peak_bytes >= record.peak_bytes and record.memory.pinned_bytes == 0  # no streaming
    stored = store.get(record.key)
    assert stored.peak_bytes == record.peak_bytes and stored.memory.where == record.memory.where
    assert abs(stored.memory.host_peak_bytes - record.memory.host_peak_bytes) <= 0.005 * 2**30  # kept as GiB
    assert all(row.peak_bytes for row in store.evaluations())
    card = views.cards(comparison)
    assert "peak memory" in card and f"{record.peak_bytes / 2**30:.2f} GiB" in card


def test_the_history_plots_ssim_against_peak_memory_too(tmp_path):
    from conftest import make_comparison

    from tmpdiff.cache import Cache
    from tmpdiff.engine.runner import Engine
    from tmpdiff.frontends import plots
    from tmpdiff.measure.evaluator import Evaluator
    from tmpdiff.studies.history import history

    store = Cache(tmp_path / "c.sqlite")
    comparison = make_comparison("fp32*2,skip*2", store=store)
    points = history(Evaluator(Engine("cpu")), store, comparison.settings)
    figure = plots.history(points, "peak_gib")
    xs = sorted(x for trace in figure.data for x in trace.x)
    assert xs == sorted(p.peak_bytes / 2**30 for p in points) and "peak memory" in figure.layout.xaxis.title.text


def test_out_of_memory_is_one_answer_and_the_app_serves_the_next_image(tmp_path, monkeypatch):
    import gradio as gr

    from tmpdiff import get_model
    from tmpdiff.cache import Cache
    from tmpdiff.engine import runner
    from tmpdiff.engine.runner import Engine
    from tmpdiff.studies.study import Study
    from tmpdiff.ui import panels
    from tmpdiff.ui.state import AppState

    store = Cache(tmp_path / "c.sqlite")
    app = AppState(Study.open(Engine("cpu"), store), get_model("shapes-dit"))
    pictures, failures = runner._pictures, iter([True])

    def once_out_of_memory(output):
        if next(failures, False):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 512.00 MiB")
        return pictures(output)

    monkeypatch.setattr(runner, "_pictures", once_out_of_memory)
    args = ("shapes-dit", "red circle", 5, 4, 64, 3.0, "fp32*2,skip*2", lambda *a, **k: None)
    with pytest.raises(gr.Error, match="out of GPU memory making an image with fp32\\*4.*nothing was stored"):
        panels.run_image(app, *args)
    assert store.evaluations() == []  # nothing kept of the image that did not fit
    pair, summary, comparison = panels.run_image(app, *args)  # the app serves the next image
    assert summary["schedule"] == "fp32*2,skip*2" and len(store.evaluations()) == 2


def test_a_search_with_one_schedule_out_of_memory_finishes_without_it(monkeypatch):
    from tmpdiff.engine.runner import Engine
    from tmpdiff.measure.evaluator import Evaluator
    from tmpdiff.memory.budget import OutOfMemory
    from tmpdiff.studies.procedure import run_search
    from tmpdiff.studies.request import SearchRequest

    too_big = "fp32*4,skip*4"
    generate = Engine.generate

    def fitting(self, settings, schedule=None, *args, **kwargs):
        if str(schedule) == too_big:
            raise OutOfMemory(f"an image with {schedule}", 12 << 30, "a plan")
        return generate(self, settings, schedule, *args, **kwargs)

    monkeypatch.setattr(Engine, "generate", fitting)
    request = SearchRequest(model="shapes-dit", prompts=("red circle",), seeds=(0,), steps=8, ladder=("fp32", "skip"),
                            target_ssim=0.5, additivity_samples=0)
    report = run_search(Evaluator(Engine("cpu")), request)
    assert report.not_run == (too_big,)
    assert too_big not in {p.schedule for p in (*report.pareto, *report.baselines)} and report.schedule != too_big
    assert report.to_dict()["not_run"] == [too_big]


def deep_tiny_flux():
    """tiny-flux with ten blocks (a plan needs a few to choose between), the same weights every call."""
    from diffusers import FluxTransformer2DModel

    from tmpdiff import load_pipeline

    pipe = load_pipeline("tiny-flux")
    torch.manual_seed(0)
    pipe.register_modules(transformer=FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=8, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8]).eval())
    return pipe


def test_the_engine_under_a_placement_gives_the_unplaced_image_with_variants_built_block_by_block(monkeypatch):
    """The engine's whole path under a plan that streams (on the CPU, the budget set by hand: ``--gpu-memory`` is a
    GPU's): the reference streams part of its blocks, a quantized variant is built from them block by block and
    placed once its size is known, and the image is bit for bit the one made without a plan."""
    import numpy as np

    from tmpdiff.engine.runner import Engine, telling_plans_to
    from tmpdiff.engine.settings import RunSettings
    from tmpdiff.memory.budget import Budget
    from tmpdiff.memory.placer import Placer

    settings = RunSettings(model="tiny-flux", steps=4, size=32)
    schedule = "fp32,int8wo*2,fp32"
    plain = Engine("cpu", compile=False)
    plain.adopt("tiny-flux", deep_tiny_flux())
    want = plain.generate(settings, schedule)

    monkeypatch.setattr("tmpdiff.engine.runner.estimate_working", lambda *a, **k: 0)
    engine = Engine("cpu", compile=False)
    pipe = deep_tiny_flux()
    placer = engine.adopt("tiny-flux", pipe, Placer(pipe, torch.device("cpu"), None)).placer
    everything = placer.prepare(["fp32", "int8wo"], 0)  # no budget: the whole pipeline's bytes
    block = placer.sizes().parts["fp32"].largest_block
    engine.budget = Budget(everything.peak - 4 * block, given=True)  # the reference cannot all stay
    placer.set_budget(engine.budget.bytes)
    plans = []
    with telling_plans_to(lambda model, line: plans.append(line)):
        placed = engine.generate(settings, schedule)
    assert np.array_equal(np.asarray(placed.image), np.asarray(want.image))
    assert placed.steps_run == want.steps_run == ["fp32", "int8wo", "int8wo", "fp32"]
    assert placer.plan is not None and placer.plan.streams("fp32") and "streamed" in plans[-1]
    assert placer.streamers["fp32"].onloads > 0  # blocks came in to run, and to be quantized
    assert placed.memory.plan == placer.plan.line()
    # the plan weighs each part by the steps that read it (fp32 at 2 of 4 steps, int8wo at 2), not once a precision
    reads = {"fp32": 2, "int8wo": 2}
    assert {name: placer._reads[name] for name in reads} == reads
    assert placer.plan.per_image == placer.plan.streamed_per_image(placer._reads)
    assert engine.set_up.plans >= 1 and engine.set_up.placement > 0  # what --verbose shows as placement
    assert plain.set_up.plans == 0 and plain.set_up.placement == 0


def mixed_reads(bf16_steps: int, steps: int = 28) -> dict[str, int]:
    """How often each part runs for one image of ``bf16*k`` and ``fp8`` at the other steps (encoders once)."""
    return {"bf16": bf16_steps, "fp8": steps - bf16_steps, "text_encoder_2": 1, "vae": 1}


def test_residency_goes_to_the_bytes_an_image_reads_most_and_never_streams_more_than_cheapest_first():
    once_each = dict.fromkeys(IN_USE, 1)  # the former policy: the cheapest variant first, whatever it runs
    for budget in range(10, 30, 2):
        for bf16_steps in range(28):
            reads = mixed_reads(bf16_steps)
            plan = plan_placement(flux_like(), IN_USE, budget * GIB, reads)
            former = plan_placement(flux_like(), IN_USE, budget * GIB, once_each)
            assert plan.peak <= budget * GIB
            assert plan.per_image == plan.streamed_per_image(reads) <= former.streamed_per_image(reads)
    # Mostly 16-bit steps: the reference's blocks are kept before the cheaper variant's.
    reads = mixed_reads(24)
    plan = plan_placement(flux_like(), IN_USE, 20 * GIB, reads)
    former = plan_placement(flux_like(), IN_USE, 20 * GIB, once_each)
    assert len(plan.resident["bf16"]) > len(former.resident["bf16"])
    assert plan.streamed_per_image(reads) < former.streamed_per_image(reads)


def test_a_plan_says_what_an_image_streams_beside_the_reference_planned_alone_under_the_same_budget():
    from tmpdiff.memory.placement import plan_beside_reference

    ref_in_use = ["bf16", "text_encoder_2", "vae"]
    for budget in (12, 16, 20, 24, 28):
        reads = mixed_reads(8)  # bf16*4,fp8*20,bf16*4
        plan = plan_beside_reference(flux_like(), IN_USE, budget * GIB, reads, "bf16", 28)
        alone = plan_placement(flux_like(), ref_in_use, budget * GIB, {"bf16": 28, "text_encoder_2": 1, "vae": 1})
        assert plan.reference_per_image == alone.per_image == alone.streamed_per_image({"bf16": 28,
                                                                                       "text_encoder_2": 1})
        fewer = plan.per_image <= plan.reference_per_image
        assert fewer == (budget <= 22), (budget, plan.per_image / GIB, plan.reference_per_image / GIB)
        said = plan.line()
        assert ("more than the reference alone" in said) == (not fewer), said
        assert f"{plan.per_image / GIB:.0f} GiB streamed an image" in said


def _mapped_files() -> list[tuple[int, int, str]]:
    """The process's memory mappings of files: (start, end, path)."""
    maps = []
    for line in open("/proc/self/maps"):
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].strip().startswith("/"):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            maps.append((start, end, fields[5].strip()))
    return maps


def write_tiny_checkpoint(folder, monkeypatch):
    """A FLUX-like random-weight checkpoint, small, written the way ``write_random`` writes the real-size ones."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from tmpdiff.pipelines import random_weights, tiny
    from tmpdiff.pipelines.random_weights import RandomBuild, write_random

    def small(device, dtype):
        pipe = tiny.BUILDERS["tiny-flux"]()
        return {"scheduler": FlowMatchEulerDiscreteScheduler(), "vae": pipe.vae, "text_encoder": pipe.text_encoder,
                "tokenizer": pipe.tokenizer, "tokenizer_2": pipe.tokenizer_2}

    build = RandomBuild("FluxPipeline", small, {
        "text_encoder_2": lambda: T5EncoderModel(T5Config(vocab_size=1000, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                                          num_heads=4, decoder_start_token_id=0)),
        "transformer": lambda: FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))},
        frozenset({"transformer", "text_encoder_2"}))
    monkeypatch.setitem(random_weights.RANDOM_BUILDS, "test-arch", build)
    return write_random("test-arch", folder, torch.float32)


def tiny_image(pipe):
    return pipe("a red cat", num_inference_steps=2, height=32, width=32, max_sequence_length=16,
                generator=torch.Generator().manual_seed(0), output_type="np").images


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
def test_random_weights_are_written_once_as_safetensors_and_load_memory_mapped_like_a_checkpoint(tmp_path,
                                                                                                  monkeypatch):
    """A random-weight model goes through the loading path of a real checkpoint: written once into the cache folder,
    then ``from_pretrained``; its large weights stay file-backed in host memory (the kernel can drop those pages),
    not a second, anonymous copy."""
    from diffusers import FluxPipeline

    from tmpdiff.pipelines.random_weights import write_random

    folder = write_tiny_checkpoint(tmp_path / "weights", monkeypatch)
    written = sorted(folder.rglob("*.safetensors"))
    assert {p.parent.name for p in written} >= {"transformer", "text_encoder_2", "vae", "text_encoder"}
    stamps = {p: p.stat().st_mtime_ns for p in written}
    assert write_random("test-arch", tmp_path / "weights", torch.float32) == folder  # not written again
    assert {p: p.stat().st_mtime_ns for p in written} == stamps
    assert not list(tmp_path.glob("*.partial-*"))
    pipe = FluxPipeline.from_pretrained(folder, dtype=torch.float32)
    files = [m for m in _mapped_files() if m[2].endswith(".safetensors") and m[2].startswith(str(folder))]
    weights = [p for p in pipe.transformer.parameters() if p.numel() >= 1024]
    assert weights and all(any(start <= p.data_ptr() < end for start, end, _ in files) for p in weights)
    image = tiny_image(pipe)
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()


def test_random_weights_that_cannot_be_written_are_refused_in_one_line_leaving_nothing_half_written(tmp_path,
                                                                                                   monkeypatch):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with pytest.raises(ValueError, match="could not write random weights into") as refused:
        write_tiny_checkpoint(blocked / "weights", monkeypatch)
    assert str(blocked / "weights") in str(refused.value) and "TMPDIFF_WEIGHTS_DIR" in str(refused.value)
    assert "\n" not in str(refused.value) and sorted(tmp_path.iterdir()) == [blocked]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
def test_a_pageable_block_streams_from_its_checkpoint_pages_and_moves_between_modes_without_a_copy_left(
        tmp_path, monkeypatch):
    """A block streamed pageable (an encoder; a variant the schedule does not read) points back at its checkpoint's
    memory-mapped values, even after it was resident; streamed page-locked it gets its own host buffer; switching
    modes frees that buffer; the weights keep their values bit for bit (the image to float rounding: the CPU's
    kernels may sum in another order for memory aligned differently)."""
    from diffusers import FluxPipeline

    from tmpdiff.memory.streaming import BlockStreamer, checkpoint_origins
    from tmpdiff.variants.copies import find_blocks

    pipe = FluxPipeline.from_pretrained(write_tiny_checkpoint(tmp_path / "w", monkeypatch), dtype=torch.float32)
    want = tiny_image(pipe)
    blocks = find_blocks(pipe.transformer)
    origins = checkpoint_origins([pipe.transformer])
    weight = blocks[1].norm.linear.weight
    assert id(weight) in origins and origins[id(weight)].data_ptr() == weight.data_ptr()
    values = [p.detach().clone() for p in blocks[1].parameters()]

    def same() -> bool:
        held = all(torch.equal(p, v) for p, v in zip(blocks[1].parameters(), values, strict=True))
        return held and np.allclose(tiny_image(pipe), want, atol=1e-5)

    streamer = BlockStreamer(blocks, torch.device("cpu"), origins=origins)
    streamer.make_resident([1])
    streamer.stream([1])  # page-locked mode (on a CPU device: an ordinary buffer): a copy
    copied = streamer._streamed[1].buffer
    assert copied is not None and weight.data_ptr() != origins[id(weight)].data_ptr()
    assert same()
    streamer.stream([1], pageable=True)  # the other mode: back on the checkpoint's pages, the buffer freed
    assert weight.data_ptr() == origins[id(weight)].data_ptr() and streamer._streamed[1].buffer is None
    assert copied.memory.numel() == 0 and streamer.pinned_bytes() == 0
    assert same()
    streamer.stream([1], pageable=False)
    assert streamer._streamed[1].buffer is not None and same()


class FakeRegistration:
    """CUDA's host registration, faked on a CPU: the ranges registered (with their flags), refused like CUDA refuses
    an overlap; ``read_only=False``: a driver that cannot register memory read-only."""

    def __init__(self, read_only: bool = True) -> None:
        self.ranges: dict[int, int] = {}
        self.flags: dict[int, int] = {}
        self.read_only = read_only

    def cudaHostRegister(self, start, size, flags):  # noqa: N802 (CUDA's name)
        if flags & 8 and not self.read_only:
            return 1  # cudaErrorInvalidValue
        if any(start < s + n and s < start + size for s, n in self.ranges.items()):
            return 712  # cudaErrorHostMemoryAlreadyRegistered
        self.ranges[start], self.flags[start] = size, flags
        return 0

    def cudaHostUnregister(self, start):  # noqa: N802
        assert self.ranges.pop(start, None) is not None
        return 0


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
def test_a_page_locked_block_pins_its_checkpoint_pages_in_place_instead_of_copying_them(tmp_path, monkeypatch):
    """Streamed blocks of a memory-mapped checkpoint are page-locked where the file's pages lie (read-only, so the
    kernel makes no copy-on-write copy): most of a block's bytes stay in place on registered pages, the tensors on
    pages it shares with a neighbour are copied, ranges are page-aligned and disjoint, each unregistered when its
    block is made resident, streams pageable or the streamer is removed. Where registration is refused (a driver
    without read-only registration), blocks are copied."""
    from diffusers import FluxPipeline

    from tmpdiff.memory.streaming import PAGE, BlockStreamer, checkpoint_origins
    from tmpdiff.variants.copies import find_blocks, tensor_bytes

    pipe = FluxPipeline.from_pretrained(write_tiny_checkpoint(tmp_path / "w", monkeypatch), dtype=torch.float32)
    want = tiny_image(pipe)
    blocks = find_blocks(pipe.transformer)
    origins = checkpoint_origins([pipe.transformer])
    fake = FakeRegistration()
    monkeypatch.setattr(torch.cuda, "cudart", lambda: fake)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    streamer = BlockStreamer(blocks, torch.device("cpu"), origins=origins)
    streamer.page_lock = streamer.pin_in_place = True  # what a CUDA streamer does with its host copies

    def in_place(index: int) -> bool:  # its tensors on the checkpoint's registered pages, or copied
        block, spans = streamer._streamed[index], [(s, s + n) for s, n in fake.ranges.items() if fake.flags[s] == 8]
        copied = {t.data_ptr() for t in (block.buffer.copies if block.buffer else [])}
        for p in blocks[index].parameters():
            inside = any(s <= p.data_ptr() and p.data_ptr() + tensor_bytes(p) <= e for s, e in spans)
            if not (inside and p.data_ptr() == origins[id(p)].data_ptr() or p.data_ptr() in copied):
                return False
        own = sum(tensor_bytes(t) for t in blocks[index].parameters())
        return block.pin is not None and block.pin.nbytes > own / 2  # most of it in place

    streamer.stream(range(len(blocks)))
    assert len(blocks) >= 3 and all(in_place(i) for i in range(len(blocks)))
    spans = sorted((s, s + n) for s, n in fake.ranges.items())
    # the checkpoint's pages read-only (no copy-on-write copy), page-aligned; the copies' own buffers at their size
    assert all(s % PAGE == 0 and e % PAGE == 0 for s, e in spans if fake.flags[s] == 8)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert streamer.pinned_bytes() == sum(fake.ranges.values()) > streamer.pinned_copy_bytes() > 0
    assert np.allclose(tiny_image(pipe), want, atol=1e-5)
    streamer.make_resident([1])
    resident = blocks[1].norm.linear.weight
    assert in_place(0) and in_place(2) and resident.data_ptr() != origins[id(resident)].data_ptr()
    streamer.stream([0], pageable=True)
    assert streamer._streamed[0].pin is None and streamer._streamed[0].buffer is None and in_place(2)
    assert streamer.pinned_bytes() == sum(fake.ranges.values())
    streamer.remove()
    assert not fake.ranges and np.allclose(tiny_image(pipe), want, atol=1e-5)

    refused = FakeRegistration(read_only=False)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: refused)
    streamer = BlockStreamer(blocks, torch.device("cpu"), origins=origins)
    streamer.page_lock = streamer.pin_in_place = True
    streamer.stream(range(len(blocks)))
    assert all(streamer._streamed[i].buffer is not None and streamer._streamed[i].pin is None
               for i in range(len(blocks)))
    assert all(flags == 0 for flags in refused.flags.values()) and streamer.pinned_copy_bytes() > 0
    assert streamer.pinned_bytes() == sum(refused.ranges.values()) and np.allclose(tiny_image(pipe), want, atol=1e-5)
    streamer.remove()  # unregistered while CUDA is still the fake one (a finalizer left would call the real one)
    assert not refused.ranges


def test_a_search_under_a_budget_places_its_parts_once_for_every_schedule_it_evaluates(monkeypatch):
    """One plan for a whole search (its ladder's rungs at equal shares): nothing moves between evaluations, and the
    step costs it plans with hold for each schedule it compares; one schedule's own plan would differ."""
    from tmpdiff.engine.runner import Engine, telling_plans_to
    from tmpdiff.engine.settings import RunSettings
    from tmpdiff.measure.evaluator import Evaluator
    from tmpdiff.memory.budget import Budget
    from tmpdiff.memory.placer import Placer
    from tmpdiff.studies.procedure import run_search, search_placement
    from tmpdiff.studies.request import SearchRequest

    monkeypatch.setattr("tmpdiff.engine.runner.estimate_working", lambda *a, **k: 0)
    engine = Engine("cpu", compile=False)
    pipe = deep_tiny_flux()
    placer = engine.adopt("tiny-flux", pipe, Placer(pipe, torch.device("cpu"), None)).placer
    everything = placer.prepare(["fp32", "int8wo"], 0)
    engine.budget = Budget(everything.peak - 4 * placer.sizes().parts["fp32"].largest_block, given=True)
    placer.set_budget(engine.budget.bytes)
    monkeypatch.setattr(placer, "observed", lambda peak, building=False: None)  # a CPU peak is its RSS
    request = SearchRequest(model="tiny-flux", prompts=("a red cat",), seeds=(0,), steps=6, size=32,
                            ladder=("fp32", "int8wo", "skip"), target_ssim=0.5, additivity_samples=0)
    shared = search_placement(RunSettings(model="tiny-flux", steps=6, size=32), request.ladder)
    assert shared is not None and str(shared) == "fp32,int8wo,fp32,int8wo,fp32,int8wo"
    engine.generate(RunSettings(model="tiny-flux", steps=6, size=32), shared)  # its variants built and placed
    placed, plans = placer.plan, []
    with telling_plans_to(lambda model, line: plans.append(line)):
        report = run_search(Evaluator(engine), request)
    assert report.evaluations >= 2 and plans == [] and placer.plan is placed  # not one move during the search
    assert engine._one_plan is None  # and each call afterwards is placed for itself again
    engine.generate(RunSettings(model="tiny-flux", steps=6, size=32), "fp32*6")
    assert placer.plan is not placed


def test_the_working_memory_planned_is_calibrated_by_measured_peaks_down_as_well_as_up():
    """The estimate plans a call's first image; its measured peak (less the resident bytes, plus a margin) plans the
    next calls of the same estimate, lower where the estimate was generous (bytes for resident blocks), higher where
    it was short; running out of memory raises it; another size starts from its own estimate."""
    from tmpdiff.memory.placer import CALIBRATION_MARGIN, Placer

    pipe = deep_tiny_flux()
    placer = Placer(pipe, torch.device("cpu"), None)
    estimate = GIB
    placer.prepare(["fp32"], estimate)
    assert placer.sizes().working == estimate
    placer.observed(placer.plan.resident_bytes + (1 << 20))  # the call needed 1 MiB beyond its weights
    assert placer.sizes().working == estimate  # the plan in place keeps its room
    placer.prepare(["fp32"], estimate)
    assert placer.sizes().working == (1 << 20) + CALIBRATION_MARGIN
    placer.observed(placer.plan.resident_bytes + 5 * GIB, building=True)  # a build's temporaries: not calibrated
    placer.prepare(["fp32"], estimate)
    assert placer.sizes().working == (1 << 20) + CALIBRATION_MARGIN
    placer.observed(placer.plan.resident_bytes + 2 * GIB)  # a larger call of the same estimate: more from now on
    placer.prepare(["fp32"], estimate)
    assert placer.sizes().working == 2 * GIB + CALIBRATION_MARGIN
    placer.ran_out()
    placer.prepare(["fp32"], estimate)
    assert placer.sizes().working > 2 * GIB + CALIBRATION_MARGIN
    placer.prepare(["fp32"], 3 * GIB)  # another size: its own estimate until measured
    assert placer.sizes().working == 3 * GIB

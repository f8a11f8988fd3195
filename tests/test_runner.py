"""One image from one setting: one timed pipeline call, build time left out."""

import numpy as np

from tmpdiff.engine.runner import Engine
from tmpdiff.engine.settings import RunSettings


def test_an_image_that_builds_a_variant_is_computed_once_with_its_build_time_left_out():
    engine = Engine("cpu")
    settings = RunSettings(model="shapes-dit", steps=4)
    engine.generate(settings)  # the pipeline is loaded and the reference runs
    before = engine.calls["denoiser"]
    result = engine.generate(settings, "fp32,int8wo*3")  # builds the int8wo variant during the call
    assert engine.calls["denoiser"] - before == 4  # one pipeline call: 4 steps, one denoiser call each
    assert result.steps_run == ["fp32", "int8wo", "int8wo", "int8wo"]
    assert 0 < result.seconds and sum(result.step_seconds) <= result.seconds


def test_a_build_listener_is_a_per_call_option_of_its_own_thread():
    import threading

    from tmpdiff.engine.runner import telling_builds_to

    engine = Engine("cpu")
    settings = RunSettings(model="shapes-dit", steps=2)
    heard, elsewhere = [], []

    def other_user():  # runs while the listener below is set, in another thread: hears nothing of it
        with telling_builds_to(lambda precision, *_: elsewhere.append(precision)):
            engine.generate(settings, "fp32,fp16")

    with telling_builds_to(lambda precision, *_: heard.append(precision)):
        engine.generate(settings, "fp32,bf16")
        thread = threading.Thread(target=other_user)
        thread.start()
        thread.join()
    assert heard == ["bf16"] and elsewhere == ["fp16"]


def test_precisions_cold_at_these_shapes_warm_up_once_for_a_step_each():
    # On CUDA a first image's time would carry kernel and encoder start-up (it read 1.5x for a 1.2x schedule).
    engine = Engine("cpu")
    settings = RunSettings(model="shapes-dit", steps=6)
    pipe = engine.pipeline("shapes-dit")
    from tmpdiff.steps.schedule import Schedule

    before = engine.calls["warm_up"]
    engine._warm_up(pipe, settings.call_kwargs(), Schedule.parse("fp32*2,int8wo*2,skip*2"))
    assert engine.calls["warm_up"] - before == 2  # one step of fp32, one of int8wo; skip runs nothing
    engine._warm_up(pipe, settings.call_kwargs(), Schedule.parse("fp32*3,int8wo,bf16*2"))
    assert engine.calls["warm_up"] - before == 4  # only bf16 was cold: padded to the two steps a run needs
    from tmpdiff.engine.settings import batch_call_kwargs

    batch = batch_call_kwargs([settings, RunSettings(model="shapes-dit", steps=6, seed=1)], "cpu")
    engine._warm_up(pipe, batch, Schedule.parse("fp32*6"))
    assert engine.calls["warm_up"] - before == 6  # a batch of two is other shapes: cold again


def test_two_engines_in_one_process_hold_one_pipeline_at_a_time_and_closing_lets_go_of_it():
    """Memory is given back: an engine's pipeline and its variants go when the engine is closed or dropped (the
    process's table of variant banks used to keep every denoiser ever loaded, and on a GPU its memory)."""
    import gc
    import weakref

    settings = RunSettings(model="shapes-dit", steps=4)
    first = Engine("cpu", compile=False)
    first.generate(settings, "fp32*2,int8wo*2")  # a quantized variant built beside the reference
    denoiser = weakref.ref(first.loaded("shapes-dit").transformer)
    first.close()
    assert denoiser() is None  # closed: the pipeline and its bank are gone while the engine lives
    image = first.generate(settings, "fp32*4").image  # and it still works, loading the model again
    second = Engine("cpu", compile=False)
    again = weakref.ref(first.loaded("shapes-dit").transformer)
    assert np.array_equal(np.asarray(second.generate(settings, "fp32*4").image), np.asarray(image))
    del first
    gc.collect()
    assert again() is None  # dropped: the same, without a close

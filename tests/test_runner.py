"""One image from one setting: one timed pipeline call, build time left out."""

from tmpdiff.runner import Engine, RunSettings


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

    from tmpdiff.runner import telling_builds_to

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
    assert heard == ["bf16"] and elsewhere == ["fp16"] and engine.on_build is None

"""The shipped shapes-dit: recognisable images, seed variety, real sensitivity to precision."""

import json
from pathlib import Path

import numpy as np
import pytest
from shape_oracle import classify

from tmpdiff import DEFAULT_MODEL, get_model
from tmpdiff.engine.runner import Engine
from tmpdiff.engine.settings import RunSettings
from tmpdiff.measure.metrics import ssim

WEIGHTS = Path(__file__).resolve().parent.parent / "tmpdiff" / "weights" / "shapes-dit"


@pytest.fixture(scope="module")
def engine():
    return Engine("cpu")


def test_weights_are_small_safetensors_with_a_model_card():
    files = [p for p in WEIGHTS.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 50 * 2**20
    assert {p.name for p in files if p.suffix == ".safetensors"} == {"diffusion_pytorch_model.safetensors"}
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    card = (WEIGHTS / "README.md").read_text()
    for needed in ("seed", "steps", "train_shapes_dit"):
        assert needed in card
    assert json.loads((WEIGHTS / "training.json").read_text())["labels"] == list(get_model(DEFAULT_MODEL).labels)


def test_every_class_is_recognisable(engine):
    spec = get_model(DEFAULT_MODEL)
    verdicts = []
    for label in spec.labels:
        for seed in (100, 101, 102):
            image = np.asarray(engine.generate(RunSettings(prompt=label, seed=seed)).image) / 255.0
            verdicts.append(classify(image) == label)
    accuracy = float(np.mean(verdicts))
    assert accuracy >= 0.9, f"only {accuracy:.0%} of {len(verdicts)} samples show the asked class"


def test_different_seeds_give_different_images(engine):
    a = engine.generate(RunSettings(prompt="green circle", seed=0)).image
    b = engine.generate(RunSettings(prompt="green circle", seed=1)).image
    assert ssim(a, b) < 0.9


def test_precision_matters_and_early_steps_matter_most(engine):
    prompts = ["red circle", "blue triangle", "yellow square", "green square"]
    uniform, protected = [], []
    for prompt in prompts:
        settings = RunSettings(prompt=prompt, seed=1)
        reference = engine.generate(settings).image
        uniform.append(ssim(engine.generate(settings, "int4wo*8").image, reference))
        protected.append(ssim(engine.generate(settings, "fp32*2,int4wo*6").image, reference))
    assert 0.3 < np.mean(uniform) < 0.99
    assert np.mean(protected) > np.mean(uniform)


def test_a_prompt_outside_the_classes_is_refused_clearly():
    with pytest.raises(ValueError, match=r"draws only its classes, not 'a cat'.*'red square'"):
        RunSettings(prompt="a cat")

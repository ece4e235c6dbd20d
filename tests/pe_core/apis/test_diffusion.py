from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pe_core.apis import DiffusionApi, create_api
from pe_core.apis.base import VariationApi
from pe_core.apis.diffusion import ModelInfo, shipped_model_path
from pe_core.errors import PrivevoError
from pe_core.samples import Samples
from tests.pe_core.apis.tiny_diffusers import write_pixel_unet, write_text_to_image
from tests.pe_core.contracts import VariationApiContract, sample_distances

DIGITS = tuple(str(d) for d in range(10))


@pytest.fixture(scope="module")
def shipped() -> DiffusionApi:
    return DiffusionApi(DIGITS, num_inference_steps=10, batch_size=64, device="cpu")


class TestShippedModelContract(VariationApiContract):
    """The shipped MNIST DDPM, at CI size: 10 DDIM steps, at most 64 samples a call."""

    @classmethod
    def make_api(cls) -> VariationApi:
        return DiffusionApi(DIGITS, num_inference_steps=10, batch_size=64, device="cpu")


class TestTextToImageContract(VariationApiContract):
    """A tiny random Stable Diffusion folder: prompts per label, img2img variations."""

    n = 4
    n_distance = 24

    @pytest.fixture(scope="class")
    @classmethod
    def api(cls, tmp_path_factory: pytest.TempPathFactory) -> VariationApi:
        folder = write_text_to_image(tmp_path_factory.mktemp("sd"))
        return DiffusionApi(
            ("cat", "dog"),
            model_path=folder,
            prompts={"cat": "a cat", "dog": "a dog"},
            num_inference_steps=4,
            device="cpu",
        )


def test_shipped_model_says_what_it_was_trained_on():
    folder = shipped_model_path()
    info = ModelInfo.read(folder)
    assert info.labels == DIGITS
    assert info.null_class == 10
    assert "training split" in info.public_data
    assert "test" in info.public_data  # ...and that it never saw the test split
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 5_000_000
    training = json.loads((folder / "privevo.json").read_text())["training"]
    assert training["script"] == "scripts/train_mnist_ddpm.py"


def test_registered_and_reports_public_data(shipped: DiffusionApi):
    api = create_api("diffusion", label_names=["3", "5"], num_inference_steps=2, device="cpu")
    assert isinstance(api, DiffusionApi)
    assert api.public_data == shipped.public_data
    assert api.conditioning == "class"


def test_class_conditioning_follows_label_names():
    """Labels map to the model's classes by name, whatever their order in the API."""
    forward = DiffusionApi(["3", "7"], num_inference_steps=4, device="cpu")
    backward = DiffusionApi(["7", "3"], num_inference_steps=4, device="cpu")
    a = forward.random(1, 4, np.random.default_rng(0))  # label "7"
    b = backward.random(0, 4, np.random.default_rng(0))  # label "7"
    np.testing.assert_array_equal(a.images, b.images)
    c = forward.random(0, 4, np.random.default_rng(0))  # label "3", same noise
    assert np.abs(a.images.astype(int) - c.images).mean() > 5


def test_unconditional_sampling_ignores_the_label():
    api = DiffusionApi(["a", "b"], conditioning="none", num_inference_steps=4, device="cpu")
    one = api.random(0, 4, np.random.default_rng(1))
    other = api.random(1, 4, np.random.default_rng(1))
    np.testing.assert_array_equal(one.images, other.images)
    np.testing.assert_array_equal(other.labels, [1, 1, 1, 1])


def test_guidance_changes_the_samples():
    plain = DiffusionApi(["4"], num_inference_steps=4, device="cpu")
    guided = DiffusionApi(["4"], num_inference_steps=4, guidance_scale=3.0, device="cpu")
    a = plain.random(0, 4, np.random.default_rng(2))
    b = guided.random(0, 4, np.random.default_rng(2))
    assert np.abs(a.images.astype(int) - b.images).mean() > 1


def test_images_do_not_depend_on_the_batch_size():
    small = DiffusionApi(["1", "2"], num_inference_steps=3, batch_size=3, device="cpu")
    large = DiffusionApi(["1", "2"], num_inference_steps=3, batch_size=64, device="cpu")
    a = small.random(1, 7, np.random.default_rng(3))
    b = large.random(1, 7, np.random.default_rng(3))
    # Convolutions may sum in another order per batch size: at most a grey level apart.
    assert np.abs(a.images.astype(int) - b.images).max() <= 1
    va = small.variation(a, 0.6, np.random.default_rng(4))
    vb = large.variation(a, 0.6, np.random.default_rng(4))
    assert np.abs(va.images.astype(int) - vb.images).max() <= 1


def test_variation_strength_grows_with_max_strength(shipped: DiffusionApi):
    gentle = DiffusionApi(DIGITS, num_inference_steps=10, max_strength=0.2, device="cpu")
    population = shipped.random(5, 24, np.random.default_rng(5))
    near = sample_distances(population, gentle.variation(population, 1.0, np.random.default_rng(6)))
    far = sample_distances(population, shipped.variation(population, 1.0, np.random.default_rng(6)))
    assert far.mean() > near.mean()


def test_unconditional_model_without_privevo_json(tmp_path: Path):
    folder = write_pixel_unet(tmp_path)
    api = DiffusionApi(["x", "y", "z"], model_path=folder, num_inference_steps=3, device="cpu")
    assert api.conditioning == "none"
    assert api.public_data == ModelInfo().public_data
    samples = api.random(2, 5, np.random.default_rng(0))
    assert samples.images is not None and samples.images.shape == (5, 8, 8, 3)
    assert len(api.variation(samples, 0.5, np.random.default_rng(1))) == 5


def test_class_map_for_unnamed_classes(tmp_path: Path):
    folder = write_pixel_unet(tmp_path, num_class_embeds=4)
    with pytest.raises(PrivevoError, match="class_map"):
        DiffusionApi(["x", "y"], model_path=folder, device="cpu")
    api = DiffusionApi(["x", "y"], model_path=folder, class_map={"x": 3, "y": 0}, device="cpu")
    assert api.conditioning == "class"
    with pytest.raises(PrivevoError, match=r"outside \[0, 4\)"):
        DiffusionApi(["x"], model_path=folder, class_map={"x": 4}, device="cpu")
    with pytest.raises(PrivevoError, match="null class"):
        DiffusionApi(["x"], model_path=folder, class_map={"x": 1}, guidance_scale=2.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": ["cat"]}, r"labels \['cat'\] have no class in the model"),
        ({"conditioning": "prompt"}, "prompts need a text-to-image pipeline"),
        ({"model_path": "/nonexistent/model"}, "no diffusers model at /nonexistent/model"),
        ({"max_strength": 0.0}, "max_strength"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"guidance_scale": float("nan")}, "guidance_scale"),
    ],
)
def test_bad_configuration_says_what_to_fix(kwargs, message):
    labels = kwargs.pop("labels", ["1"])
    with pytest.raises((PrivevoError, ValueError), match=message):
        DiffusionApi(labels, device="cpu", **kwargs)


def test_text_to_image_needs_a_prompt_per_label(tmp_path: Path):
    folder = write_text_to_image(tmp_path)
    with pytest.raises(PrivevoError, match=r"prompts for the labels \['dog'\]"):
        DiffusionApi(["cat", "dog"], model_path=folder, prompts={"cat": "a cat"}, device="cpu")


def test_variation_refuses_images_of_another_shape(shipped: DiffusionApi):
    wrong = Samples(
        ids=np.array(["a"]),
        labels=np.array([0]),
        label_names=DIGITS,
        images=np.zeros((1, 32, 32, 1), dtype=np.uint8),
    )
    with pytest.raises(PrivevoError, match=r"do not fit the model's \(28, 28, 1\)"):
        shipped.variation(wrong, 0.5, np.random.default_rng(0))


def test_bad_privevo_json_is_named(tmp_path: Path):
    (tmp_path / "privevo.json").write_text("{not json")
    with pytest.raises(PrivevoError, match=r"privevo\.json is not a valid"):
        ModelInfo.read(tmp_path)

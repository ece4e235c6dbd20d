"""Image generation with diffusion models from local diffusers checkpoints (PE, arXiv:2305.15560).

PE's image APIs (Sec. 4 of arXiv:2305.15560): ``random`` samples the model from pure noise;
``variation`` is SDEdit (Meng et al., arXiv:2108.01073): noise an image to an intermediate
step and denoise it again, so the variation keeps the image's coarse structure and redraws its
details. Here the SDEdit strength is ``degree * max_strength``: the share of the noise schedule
that is re-run (0 keeps the image, 1 redraws it from pure noise).

Two checkpoint kinds, read from the folder's ``model_index.json`` (nothing is downloaded):

* **Pixel-space UNet** (``UNet2DModel`` + a scheduler config, e.g. a ``DDPMPipeline`` folder,
  like the shipped ``mnist-ddpm``): sampled with deterministic DDIM (eta 0) on the scheduler's
  noise schedule. Unconditional models, and class-conditional ones (``num_class_embeds``) whose
  classes map to the API's labels through ``privevo.json``'s ``labels`` or ``class_map``. With a
  "null" class (``privevo.json``'s ``null_class``), ``conditioning="none"`` samples
  unconditionally and ``guidance_scale`` > 1 applies classifier-free guidance.
* **Text-to-image latent pipelines** (e.g. Stable Diffusion): ``random`` prompts the pipeline
  with one prompt per label (``prompts``), ``variation`` runs the matching image-to-image
  pipeline with the same prompt.

Determinism: every sample's starting noise comes from its own seed, drawn from the ``rng``, so
one seed gives the same images whatever the batch size. fp16 is used on CUDA, fp32 on CPU.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from pe_core.apis.base import check_variation_input
from pe_core.errors import PrivevoError, import_optional
from pe_core.samples import DataShape, Modality, Samples, new_ids

Conditioning = Literal["auto", "class", "none", "prompt"]
DEFAULT_MODEL = "mnist-ddpm"
"""The model shipped in ``pe_core/assets/models`` (trained on MNIST's training split only)."""
_SEED_BOUND = 2**63


def shipped_model_path(name: str = DEFAULT_MODEL) -> Path:
    """The folder of a model shipped with privevo."""
    return Path(str(resources.files("pe_core") / "assets" / "models" / name))


@dataclass(frozen=True)
class ModelInfo:
    """What privevo knows about a checkpoint beyond diffusers' own files (``privevo.json``).

    Attributes:
        labels: class names in class-embedding order, or () when unknown.
        null_class: the class index trained as "no class" (classifier-free guidance), or None.
        public_data: the data the model was trained on, for the privacy report.
    """

    labels: tuple[str, ...] = ()
    null_class: int | None = None
    public_data: str = "the checkpoint's training data (see its model card)"

    @staticmethod
    def read(folder: Path) -> ModelInfo:
        path = folder / "privevo.json"
        if not path.exists():
            return ModelInfo()
        try:
            raw = json.loads(path.read_text())
            return ModelInfo(
                labels=tuple(str(x) for x in raw.get("labels", ())),
                null_class=None if raw.get("null_class") is None else int(raw["null_class"]),
                public_data=str(raw.get("public_data", ModelInfo.public_data)),
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise PrivevoError(f"{path} is not a valid privevo model file: {exc}") from None


class _Generator(Protocol):
    """One checkpoint kind: makes images from per-sample seeds (uint8 (n, H, W, C))."""

    image_shape: tuple[int, int, int]

    def sample(self, conditions: Sequence[Any], seeds: Sequence[int]) -> NDArray[np.uint8]: ...

    def edit(
        self,
        images: NDArray[np.uint8],
        conditions: Sequence[Any],
        strength: float,
        seeds: Sequence[int],
    ) -> NDArray[np.uint8]: ...


def _to_uint8(images: Any) -> NDArray[np.uint8]:
    """(n, C, H, W) tensor in [-1, 1] -> uint8 (n, H, W, C)."""
    array = images.float().clamp(-1, 1).add(1).mul(127.5).round().permute(0, 2, 3, 1)
    return array.cpu().numpy().astype(np.uint8)


def _in_batches(
    n: int,
    batch_size: int,
    image_shape: tuple[int, int, int],
    fn: Callable[[slice], NDArray[np.uint8]],
) -> NDArray[np.uint8]:
    """uint8 (n, H, W, C) images made ``batch_size`` at a time by ``fn(slice of 0..n)``."""
    out = np.empty((n, *image_shape), dtype=np.uint8)
    for lo in range(0, n, batch_size):
        out[lo : lo + batch_size] = fn(slice(lo, min(n, lo + batch_size)))
    return out


class _PixelUNet:
    """Deterministic DDIM sampling and SDEdit on a pixel-space ``UNet2DModel``.

    DDIM with eta 0 (Song et al., arXiv:2010.02502, Eq. 12) on the scheduler's
    ``alphas_cumprod``; the last step lands on alpha = 1 (the clean image). Supports the
    epsilon, sample and v prediction types.
    """

    def __init__(
        self,
        folder: Path,
        *,
        steps: int,
        guidance_scale: float,
        null_class: int | None,
        batch_size: int,
        device: str,
        dtype: Any,
    ) -> None:
        torch = import_optional("torch", "diffusers")
        diffusers = import_optional("diffusers", "diffusers")
        self._torch = torch
        self.unet = diffusers.UNet2DModel.from_pretrained(
            folder, subfolder="unet", local_files_only=True, dtype=dtype
        ).to(device)
        self.unet.eval()
        scheduler_config = diffusers.DDIMScheduler.load_config(folder, subfolder="scheduler")
        scheduler = diffusers.DDIMScheduler.from_config(scheduler_config)
        self.alphas = scheduler.alphas_cumprod.to(torch.float64)
        self.prediction = scheduler.config.prediction_type
        if self.prediction not in ("epsilon", "sample", "v_prediction"):
            raise PrivevoError(f"{folder}: unsupported prediction_type {self.prediction!r}")
        self.clip = bool(scheduler.config.clip_sample)
        config = self.unet.config
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        self.image_shape = (int(height), int(width), int(config.in_channels))
        self.num_classes = config.num_class_embeds
        self.steps = steps
        self.guidance_scale = guidance_scale
        self.null_class = null_class
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype

    def _noise(self, seeds: Sequence[int]) -> Any:
        torch = self._torch
        height, width, channels = self.image_shape
        return torch.stack(
            [
                torch.randn(
                    (channels, height, width),
                    generator=torch.Generator().manual_seed(int(seed)),
                    dtype=torch.float32,
                )
                for seed in seeds
            ]
        )

    def _denoiser(self, x: Any, t: int, classes: Any) -> Any:
        """The model's noise estimate at integer step t (classifier-free guidance if set)."""
        torch = self._torch
        timesteps = torch.full((len(x),), t, device=self.device)
        x = x.to(self.device, self.dtype)
        if self.guidance_scale == 1.0 or classes is None:
            out = self.unet(x, timesteps, class_labels=classes).sample
        else:
            both = torch.cat([classes, torch.full_like(classes, self.null_class)])
            cond, uncond = self.unet(
                torch.cat([x, x]), timesteps.repeat(2), class_labels=both
            ).sample.chunk(2)
            out = uncond + self.guidance_scale * (cond - uncond)
        return out.to(torch.float64)

    def _run(self, x: Any, classes: Any, start: int, steps: int) -> Any:
        """DDIM from integer step ``start`` down to the clean image in ``steps`` steps."""
        torch = self._torch
        grid = np.unique(np.rint(np.linspace(start, 0, steps + 1)[:-1]).astype(np.int64))[::-1]
        x = x.to(torch.float64)
        with torch.inference_mode():
            for i, t in enumerate(grid.tolist()):
                a_t = self.alphas[t]
                a_prev = (
                    self.alphas[int(grid[i + 1])]
                    if i + 1 < len(grid)
                    else torch.tensor(1.0, dtype=torch.float64)
                )
                out = self._denoiser(x, t, classes).cpu()
                if self.prediction == "epsilon":
                    x0 = (x - (1 - a_t).sqrt() * out) / a_t.sqrt()
                elif self.prediction == "sample":
                    x0 = out
                else:
                    x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * out
                if self.clip:
                    x0 = x0.clamp(-1, 1)
                eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
                x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        return x

    def _classes(self, conditions: Sequence[Any]) -> Any:
        if self.num_classes is None:
            return None
        return self._torch.tensor(list(conditions), dtype=self._torch.int64, device=self.device)

    def sample(self, conditions: Sequence[Any], seeds: Sequence[int]) -> NDArray[np.uint8]:
        last = len(self.alphas) - 1

        def batch(part: slice) -> NDArray[np.uint8]:
            x = self._noise(seeds[part])
            return _to_uint8(self._run(x, self._classes(conditions[part]), last, self.steps))

        return _in_batches(len(seeds), self.batch_size, self.image_shape, batch)

    def edit(
        self,
        images: NDArray[np.uint8],
        conditions: Sequence[Any],
        strength: float,
        seeds: Sequence[int],
    ) -> NDArray[np.uint8]:
        torch = self._torch
        # SDEdit: jump to step t0 = strength * (T - 1) by the forward process, then denoise with
        # the share of the DDIM steps that strength asks for (at least one).
        start = round(strength * (len(self.alphas) - 1))
        steps = max(1, math.ceil(strength * self.steps))
        a_start = self.alphas[start]

        def batch(part: slice) -> NDArray[np.uint8]:
            x0 = (
                torch.from_numpy(np.array(images[part])).permute(0, 3, 1, 2).to(torch.float64)
                / 127.5
                - 1
            )
            noise = self._noise(seeds[part]).to(torch.float64)
            x = a_start.sqrt() * x0 + (1 - a_start).sqrt() * noise
            return _to_uint8(self._run(x, self._classes(conditions[part]), start, steps))

        return _in_batches(len(seeds), self.batch_size, self.image_shape, batch)


class _TextToImage:
    """A latent text-to-image pipeline (e.g. Stable Diffusion) and its image-to-image twin."""

    def __init__(
        self,
        folder: Path,
        *,
        steps: int,
        guidance_scale: float,
        batch_size: int,
        device: str,
        dtype: Any,
    ) -> None:
        diffusers = import_optional("diffusers", "diffusers")
        self._torch = import_optional("torch", "diffusers")
        self.pipe = diffusers.AutoPipelineForText2Image.from_pretrained(
            folder, dtype=dtype, local_files_only=True
        ).to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.img2img = diffusers.AutoPipelineForImage2Image.from_pipe(self.pipe)
        self.img2img.set_progress_bar_config(disable=True)
        size = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        self.image_shape = (int(size), int(size), 3)
        self.steps = steps
        self.guidance_scale = guidance_scale
        self.batch_size = batch_size

    def _generators(self, seeds: Sequence[int]) -> list[Any]:
        return [self._torch.Generator().manual_seed(int(s)) for s in seeds]

    def _collect(self, n: int, run: Callable[[slice], Any]) -> NDArray[np.uint8]:
        """Runs a pipeline call per batch; its float images in [0, 1] become uint8."""

        def batch(part: slice) -> NDArray[np.uint8]:
            images = np.asarray(run(part).images)
            return np.rint(images * 255).clip(0, 255).astype(np.uint8)

        return _in_batches(n, self.batch_size, self.image_shape, batch)

    def sample(self, conditions: Sequence[Any], seeds: Sequence[int]) -> NDArray[np.uint8]:
        return self._collect(
            len(seeds),
            lambda part: self.pipe(
                prompt=list(conditions[part]),
                generator=self._generators(seeds[part]),
                num_inference_steps=self.steps,
                guidance_scale=self.guidance_scale,
                height=self.image_shape[0],
                width=self.image_shape[1],
                output_type="np",
            ),
        )

    def edit(
        self,
        images: NDArray[np.uint8],
        conditions: Sequence[Any],
        strength: float,
        seeds: Sequence[int],
    ) -> NDArray[np.uint8]:
        torch = self._torch
        # diffusers runs int(steps * strength) steps and refuses zero: ask for enough steps that
        # at least one runs at this strength.
        steps = max(self.steps, math.ceil(1 / strength))
        return self._collect(
            len(seeds),
            lambda part: self.img2img(
                prompt=list(conditions[part]),
                image=torch.from_numpy(np.array(images[part])).permute(0, 3, 1, 2).float() / 255,
                strength=strength,
                generator=self._generators(seeds[part]),
                num_inference_steps=steps,
                guidance_scale=self.guidance_scale,
                output_type="np",
            ),
        )


class DiffusionApi:
    """PE's random and variation APIs on a local diffusers checkpoint.

    Args:
        label_names: the public label set.
        model_path: a local diffusers folder; None uses the shipped ``mnist-ddpm``.
        conditioning: "class" (class-conditional UNet), "none" (unconditional: every label gets
            samples from the same distribution and PE's votes sort them), "prompt" (text-to-
            image with ``prompts``), or "auto": prompts for text-to-image pipelines, classes
            when the model has class embeddings, else none.
        class_map: label name -> class index, for class-conditional models whose
            ``privevo.json`` labels differ from the API's label names.
        prompts: label name -> prompt, for text-to-image pipelines.
        num_inference_steps: DDIM steps of a full sample (SDEdit runs a share of them).
        guidance_scale: classifier-free guidance weight (1 = plain conditional sampling).
        max_strength: SDEdit strength at degree 1, in (0, 1].
        batch_size: images per forward pass.
        device: "cpu", "cuda", "cuda:N", or "auto" (CUDA when available); fp16 on CUDA.
    """

    modality: ClassVar[Modality] = "image"
    uses_accelerator: ClassVar[bool] = True
    default_degree_end: ClassVar[float] = 0.2
    default_threshold_sigmas: ClassVar[float] = 2.0

    @classmethod
    def refusals(cls, config: dict[str, Any], data: DataShape) -> list[str]:
        """Images of another size or channel count than a pixel-space model makes.

        Read from the model folder's ``unet/config.json`` where this machine has the folder
        (the shipped model always); a folder it lacks, or a latent pipeline, is checked when the
        worker loads it.
        """
        folder = (
            shipped_model_path() if config.get("model_path") is None else Path(config["model_path"])
        )
        try:
            index = json.loads((folder / "model_index.json").read_text())
            unet = json.loads((folder / "unet" / "config.json").read_text())
            if index.get("unet", [None, None])[1] != "UNet2DModel" or "text_encoder" in index:
                return []
            size = unet["sample_size"]
            height, width = (size, size) if isinstance(size, int) else size
            made = (int(height), int(width), int(unet["in_channels"]))
        except (OSError, ValueError, KeyError, TypeError):
            return []
        if data.image_shape is None or data.image_shape == made:
            return []
        return [
            f"api: the diffusion model at {folder.name} makes {made[0]}x{made[1]} images with "
            f"{made[2]} channel(s) but the dataset's are {data.image_shape[0]}x"
            f"{data.image_shape[1]} with {data.image_shape[2]}: choose a model of that size "
            "(api_config.model_path) or resize the images"
        ]

    def __init__(
        self,
        label_names: Sequence[str],
        model_path: str | Path | None = None,
        conditioning: Conditioning = "auto",
        class_map: Mapping[str, int] | None = None,
        prompts: Mapping[str, str] | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 1.0,
        max_strength: float = 0.8,
        batch_size: int = 256,
        device: str = "auto",
    ) -> None:
        torch = import_optional("torch", "diffusers")
        self.label_names = tuple(label_names)
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be positive, got {num_inference_steps}")
        if not 0 < max_strength <= 1:
            raise ValueError(f"max_strength must lie in (0, 1], got {max_strength}")
        if guidance_scale < 0 or not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be finite and >= 0, got {guidance_scale}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        folder = shipped_model_path() if model_path is None else Path(model_path)
        index_path = folder / "model_index.json"
        if not index_path.is_file():
            raise PrivevoError(
                f"no diffusers model at {folder} (no model_index.json); pass model_path as a "
                "local diffusers folder (hub names are not fetched)"
            )
        try:
            index = json.loads(index_path.read_text())
        except ValueError as exc:
            raise PrivevoError(f"{index_path} is not valid JSON: {exc}") from None
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.info = ModelInfo.read(folder)
        self.max_strength = max_strength
        unet_kind = index.get("unet", [None, None])[1]
        text_to_image = "text_encoder" in index
        if text_to_image:
            if conditioning not in ("auto", "prompt"):
                raise PrivevoError(f"{folder} is a text-to-image pipeline: use prompts")
            conditioning = "prompt"
            self._conditions: list[Any] = list(self._prompts(prompts))
            self._generator: _Generator = _TextToImage(
                folder,
                steps=num_inference_steps,
                guidance_scale=guidance_scale,
                batch_size=batch_size,
                device=device,
                dtype=dtype,
            )
        elif unet_kind == "UNet2DModel":
            pixel = _PixelUNet(
                folder,
                steps=num_inference_steps,
                guidance_scale=guidance_scale,
                null_class=self.info.null_class,
                batch_size=batch_size,
                device=device,
                dtype=dtype,
            )
            if conditioning == "auto":
                conditioning = "none" if pixel.num_classes is None else "class"
            self._conditions = self._classes(pixel, conditioning, class_map, guidance_scale)
            self._generator = pixel
        else:
            raise PrivevoError(
                f"{folder}: unsupported diffusers model (unet {unet_kind!r}); supported are "
                "pixel-space UNet2DModel folders and text-to-image pipelines"
            )
        self.conditioning = conditioning

    @property
    def public_data(self) -> str:
        """The data the generator was trained on: outside any run's DP guarantee."""
        return self.info.public_data

    def _prompts(self, prompts: Mapping[str, str] | None) -> list[str]:
        missing = [name for name in self.label_names if not prompts or name not in prompts]
        if missing:
            raise PrivevoError(f"text-to-image needs api_config.prompts for the labels {missing}")
        assert prompts is not None
        return [prompts[name] for name in self.label_names]

    def _classes(
        self,
        pixel: _PixelUNet,
        conditioning: Conditioning,
        class_map: Mapping[str, int] | None,
        guidance_scale: float,
    ) -> list[int | None]:
        """The class index each label is sampled with (the null class, or None, for "none")."""
        if conditioning == "prompt":
            raise PrivevoError("prompts need a text-to-image pipeline; this is a pixel UNet")
        if pixel.num_classes is None:
            if conditioning == "class":
                raise PrivevoError("the model has no class embeddings: use conditioning 'none'")
            if guidance_scale != 1.0:
                raise PrivevoError("guidance needs a class-conditional model with a null class")
            return [None] * len(self.label_names)
        if (conditioning == "none" or guidance_scale != 1.0) and self.info.null_class is None:
            raise PrivevoError(
                "this class-conditional model has no null class (privevo.json null_class), "
                "so it cannot sample unconditionally or use guidance"
            )
        if conditioning == "none":
            return [self.info.null_class] * len(self.label_names)
        mapping = (
            dict(class_map)
            if class_map is not None
            else {name: i for i, name in enumerate(self.info.labels)}
        )
        missing = [name for name in self.label_names if name not in mapping]
        if missing:
            raise PrivevoError(
                f"labels {missing} have no class in the model (its classes: "
                f"{list(self.info.labels) or 'unnamed'}); pass api_config.class_map "
                "or conditioning 'none'"
            )
        bad = {k: v for k, v in mapping.items() if not 0 <= v < pixel.num_classes}
        if bad:
            raise PrivevoError(f"class_map indices {bad} outside [0, {pixel.num_classes})")
        return [mapping[name] for name in self.label_names]

    def _empty(self) -> Samples:
        return Samples(
            ids=np.zeros(0, dtype=np.str_),
            labels=np.zeros(0, dtype=np.int64),
            label_names=self.label_names,
            images=np.zeros((0, *self._generator.image_shape), dtype=np.uint8),
        )

    def random(self, label: int, n: int, rng: np.random.Generator) -> Samples:
        if not 0 <= label < len(self.label_names):
            raise ValueError(f"label {label} outside [0, {len(self.label_names)})")
        if n == 0:
            return self._empty()
        seeds = rng.integers(0, _SEED_BOUND, size=n).tolist()
        images = self._generator.sample([self._conditions[label]] * n, seeds)
        return Samples(
            ids=new_ids(rng, n),
            labels=np.full(n, label, dtype=np.int64),
            label_names=self.label_names,
            images=images,
        )

    def variation(self, samples: Samples, degree: float, rng: np.random.Generator) -> Samples:
        check_variation_input("diffusion", samples, degree, self.label_names, ())
        if samples.images is None:
            raise ValueError("diffusion varies images, but got texts")
        if samples.images.shape[1:] != self._generator.image_shape:
            raise PrivevoError(
                f"images of shape {samples.images.shape[1:]} do not fit the model's "
                f"{self._generator.image_shape}"
            )
        seeds = rng.integers(0, _SEED_BOUND, size=len(samples)).tolist()
        strength = degree * self.max_strength
        images = samples.images
        if len(samples) and strength > 0:
            conditions = [self._conditions[label] for label in samples.labels.tolist()]
            images = self._generator.edit(samples.images, conditions, strength, seeds)
        return Samples(
            ids=new_ids(rng, len(samples)),
            labels=samples.labels,
            label_names=self.label_names,
            images=images,
        )

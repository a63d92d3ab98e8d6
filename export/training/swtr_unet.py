"""Reproducible demo weights: train the small SWTR-Unet on CT liver phantoms, evaluate, save.

The network inputs are built with the serving code (``services.preprocess.prepare_slice``), so
the model sees at training time exactly what the service feeds it. Targets are the phantom's
label map letterboxed into the same canvas with the same resampling as the image (per-class
fractions, padding = background), so they stay pixel-aligned with the input. The held-out score
runs the full serving geometry: prepare_slice → network → ``unletterbox`` of the logits to the
source grid → argmax → Dice against the phantom's source-resolution labels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from export.hashing import sha256_file
from export.training.loop import DemoSettings, environment, parallel_map, train_steps, write_record
from export.models.swtr_unet import SWTR_UNET_CONFIGS, SwtrUnet
from export.phantoms.ct_liver import CtPhantom, make_ct_slice
from export.registry import WEIGHTS_DIR, get_spec
from services.contract import Preprocessing
from services.preprocess import Letterbox, letterbox, prepare_slice, unletterbox

WEIGHTS_FILE = "swtr_unet_small_demo.safetensors"
RECORD_FILE = "swtr_unet_small_demo.json"
VARIANT = "small"
NUM_CLASSES = 3
TRAIN_SHAPES = ((512, 512), (512, 400), (400, 512))  # (rows, cols) fields of view seen in training


@dataclass(frozen=True)
class TrainSettings(DemoSettings):
    """Hyper-parameters of the demo run (recorded in the JSON next to the weights)."""

    pool_size: int = 2000
    learning_rate: float = 2e-3
    dice_weights: tuple[float, float] = (1.0, 3.0)  # soft Dice on (whole liver, lesion)
    eval_cases: int = 100


def demo_preprocessing() -> Preprocessing:
    """The serving preprocessing of the small variant, from the registry (what medseg.json says)."""
    return get_spec("swtr_unet").preprocessing(VARIANT)


def letterbox_targets(labels: np.ndarray, box: Letterbox, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(rows, cols) integer labels → (num_classes, size) per-class fractions in the input canvas.

    Each one-hot plane goes through the image's own letterbox resize, so targets and input are
    resampled identically; the padding is background (fraction 1 for class 0).
    """
    planes = [letterbox((labels == c).astype(np.float32), box, 1.0 if c == 0 else 0.0) for c in range(num_classes)]
    target = np.clip(np.stack(planes), 0.0, None)
    return target / np.maximum(target.sum(axis=0, keepdims=True), 1e-6)


def draw_geometry(rng: np.random.Generator) -> tuple[tuple[int, int], tuple[float, float]]:
    """A training field of view: (rows, cols) from ``TRAIN_SHAPES`` and spacing 0.6-1.0 mm per axis.

    Half the slices get square pixels, the others independent row and column spacing.
    """
    shape = TRAIN_SHAPES[int(rng.integers(len(TRAIN_SHAPES)))]
    row_mm = float(rng.uniform(0.6, 1.0))
    col_mm = row_mm if rng.random() < 0.5 else float(rng.uniform(0.6, 1.0))
    return shape, (row_mm, col_mm)


def _training_example(args: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Slice ``index`` of the pool for ``seed`` → (input (1, H, W) float16, target (3, H, W) uint8)."""
    seed, index = args
    rng = np.random.default_rng([seed, index])
    shape, spacing = draw_geometry(rng)
    phantom = make_ct_slice(rng, shape, spacing)
    pre = demo_preprocessing()
    image, box = prepare_slice(phantom.hu, "CT", phantom.spacing_mm, pre)
    target = letterbox_targets(phantom.labels, box)
    return image.astype(np.float16), np.round(target * 255.0).astype(np.uint8)


def build_pool(seed: int, size: int, workers: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-generate ``size`` training examples: inputs (N, 1, H, W) float16, targets (N, 3, H, W) uint8.

    Example i depends only on (seed, i), so the pool is the same for any number of workers.
    """
    jobs = [(seed, i) for i in range(size)]
    results = parallel_map(_training_example, jobs, workers, "phantoms", progress, chunksize=16)
    images = torch.from_numpy(np.stack([r[0] for r in results]))
    targets = torch.from_numpy(np.stack([r[1] for r in results]))
    return images, targets


def jitter_intensity(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mild per-image contrast (±3 %) and brightness (±5 HU) jitter of windowed inputs (N, 1, H, W).

    Zero pixels (air, fat below the window, padding) stay zero, as at serving time.
    """
    n = x.shape[0]
    gain = 1.0 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * 0.03
    shift = (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * (5.0 / demo_preprocessing().intensity["CT"].width)
    return torch.where(x > 0, (x * gain + shift).clamp(0.0, 1.0), x)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, dice_weights: tuple[float, float]) -> torch.Tensor:
    """Soft-target cross-entropy plus soft Dice on the whole liver (1 ∪ 2) and the lesion (2).

    ``logits`` and ``target`` are (N, 3, H, W); target rows are class fractions summing to 1.
    Dice sums over the whole batch, so slices without lesions do not produce 0/0 terms.
    """
    ce = F.cross_entropy(logits, target)
    prob = logits.softmax(dim=1)

    def dice(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (2 * (p * t).sum() + 1.0) / (p.sum() + t.sum() + 1.0)

    liver = dice(prob[:, 1] + prob[:, 2], target[:, 1] + target[:, 2])
    lesion = dice(prob[:, 2], target[:, 2])
    return ce + dice_weights[0] * (1 - liver) + dice_weights[1] * (1 - lesion)


def train_model(
    model: SwtrUnet, images: torch.Tensor, targets: torch.Tensor, settings: TrainSettings, progress: bool
) -> list[float]:
    """AdamW on random mini-batches of the pool; returns the loss per step."""
    generator = torch.Generator().manual_seed(settings.seed)
    model.train()
    model.to(memory_format=torch.channels_last)

    def batch_loss() -> torch.Tensor:
        index = torch.randint(len(images), (settings.batch_size,), generator=generator)
        x = jitter_intensity(images[index].float(), generator).contiguous(memory_format=torch.channels_last)
        t = targets[index].float()
        t = t / t.sum(dim=1, keepdim=True)  # undo the uint8 rounding
        return segmentation_loss(model(x), t, settings.dice_weights)

    losses = train_steps(list(model.parameters()), settings, batch_loss, progress)
    model.to(memory_format=torch.contiguous_format)
    return losses


def predict_labels(model: SwtrUnet, phantoms: list[CtPhantom], pre: Preprocessing, batch_size: int = 8) -> list[np.ndarray]:
    """Serving geometry: prepare_slice → model → unletterbox logits → argmax; (rows, cols) uint8 each."""
    model.eval()
    out: list[np.ndarray] = []
    for start in range(0, len(phantoms), batch_size):
        chunk = phantoms[start : start + batch_size]
        prepared = [prepare_slice(p.hu, "CT", p.spacing_mm, pre) for p in chunk]
        with torch.inference_mode():
            logits = model(torch.from_numpy(np.stack([image for image, _ in prepared]))).numpy()
        out += [unletterbox(l, box).argmax(axis=0).astype(np.uint8) for l, (_, box) in zip(logits, prepared)]
    return out


def dice_scores(predictions: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, float]:
    """Aggregated Dice (Σ 2|P∩T| / Σ (|P|+|T|) over cases) and per-case summaries.

    Keys: liver_whole (labels 1 ∪ 2), liver_parenchyma (label 1), lesion (label 2),
    lesion_on_lesion_slices (aggregated over cases whose truth has a lesion), plus per-case
    median and 10th percentile of whole-liver Dice and of lesion Dice on lesion slices.
    """
    regions = {"liver_whole": (1, 2), "liver_parenchyma": (1,), "lesion": (2,)}
    sums = {k: [0.0, 0.0] for k in (*regions, "lesion_on_lesion_slices")}
    per_case: dict[str, list[float]] = {"liver_whole": [], "lesion": []}
    for pred, truth in zip(predictions, truths):
        for key, classes in regions.items():
            p, t = np.isin(pred, classes), np.isin(truth, classes)
            inter, size = float(np.logical_and(p, t).sum()), float(p.sum() + t.sum())
            sums[key][0] += inter
            sums[key][1] += size
            if key == "liver_whole" and t.any():
                per_case[key].append(2 * inter / size)
            if key == "lesion" and t.any():
                sums["lesion_on_lesion_slices"][0] += inter
                sums["lesion_on_lesion_slices"][1] += size
                per_case[key].append(2 * inter / size)
    scores = {k: (2 * i / s if s else 1.0) for k, (i, s) in sums.items()}
    for key, values in per_case.items():
        if values:
            scores[f"{key}_case_median"] = float(np.median(values))
            scores[f"{key}_case_p10"] = float(np.percentile(values, 10))
    scores["cases"] = float(len(predictions))
    scores["lesion_cases"] = float(len(per_case["lesion"]))
    return scores


def held_out_phantoms(seed: int, count: int, random_geometry: bool) -> list[CtPhantom]:
    """Fresh phantoms: 512×512 at 0.8 mm, or (``random_geometry``) the training field-of-view mix."""
    phantoms = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        shape, spacing = draw_geometry(rng) if random_geometry else ((512, 512), (0.8, 0.8))
        phantoms.append(make_ct_slice(rng, shape, spacing))
    return phantoms


def evaluate(model: SwtrUnet, seed: int, count: int, random_geometry: bool = False) -> dict[str, float]:
    """Dice of ``model`` on ``count`` held-out phantoms through the serving geometry."""
    phantoms = held_out_phantoms(seed, count, random_geometry)
    predictions = predict_labels(model, phantoms, demo_preprocessing())
    return dice_scores(predictions, [p.labels for p in phantoms])


def train_swtr_unet_demo(
    out_dir: Path = WEIGHTS_DIR, *, seed: int = 0, steps: int = TrainSettings.steps, progress: bool = True
) -> dict:
    """Train the small SWTR-Unet on phantoms, write ``<out_dir>/swtr_unet_small_demo.{safetensors,json}``.

    Returns the training record (also written as JSON): settings, data description, wall time,
    held-out Dice, the weights' SHA-256 and the torch version.
    """
    settings = TrainSettings(seed=seed, steps=steps)
    started = time.perf_counter()
    torch.set_num_threads(settings.threads)
    images, targets = build_pool(settings.seed, settings.pool_size, settings.workers, progress)
    generated = time.perf_counter()
    torch.manual_seed(settings.seed)
    model = SwtrUnet(SWTR_UNET_CONFIGS[VARIANT])
    losses = train_model(model, images, targets, settings, progress)
    trained = time.perf_counter()
    eval_seed = settings.seed + settings.eval_seed_offset
    held_out = evaluate(model, eval_seed, settings.eval_cases)
    held_out_mixed = evaluate(model, eval_seed + 1, settings.eval_cases, random_geometry=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / WEIGHTS_FILE
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items() if v.is_floating_point()}
    state.update({k: v.detach().contiguous() for k, v in model.state_dict().items() if not v.is_floating_point()})
    save_file(state, str(weights_path), metadata={"model": "swtr_unet", "variant": VARIANT, "seed": str(seed)})
    record = {
        "model": "swtr_unet",
        "variant": VARIANT,
        "weights_file": WEIGHTS_FILE,
        "sha256": sha256_file(weights_path),
        "seed": settings.seed,
        "steps": settings.steps,
        "batch_size": settings.batch_size,
        "learning_rate": settings.learning_rate,
        "weight_decay": settings.weight_decay,
        "optimizer": "AdamW, linear warm-up then cosine decay",
        "loss": "soft-target cross-entropy + soft Dice (whole liver x%.2g, lesion x%.2g)" % settings.dice_weights,
        "pool_size": settings.pool_size,
        "data": (
            "export.phantoms.ct_liver.make_ct_slice: procedural axial abdominal CT in HU, 0-5 hypodense "
            "lesions (4-35 mm, 15-45 HU below liver), noise sigma 8-20 HU; fields of view "
            f"{[list(s) for s in TRAIN_SHAPES]} px at 0.6-1.0 mm per axis (half square); inputs from "
            f"services.preprocess.prepare_slice with the model card's CT window, letterbox "
            f"to {list(SWTR_UNET_CONFIGS[VARIANT].input_size)}; +-3% contrast, +-5 HU brightness jitter"
        ),
        "held_out": {
            "description": f"{settings.eval_cases} fresh 512x512 phantoms at 0.8 mm (seed {eval_seed}), serving geometry",
            **held_out,
        },
        "held_out_mixed_geometry": {
            "description": f"{settings.eval_cases} fresh phantoms with the training field-of-view mix (seed {eval_seed + 1})",
            **held_out_mixed,
        },
        "final_loss_mean_last_20": float(np.mean(losses[-20:])),
        "wall_time_s": {
            "generate": round(generated - started, 1),
            "train": round(trained - generated, 1),
            "total": round(time.perf_counter() - started, 1),
        },
        **environment(settings.threads),
    }
    return write_record(out_dir / RECORD_FILE, record)

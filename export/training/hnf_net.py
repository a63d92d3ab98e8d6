"""Reproducible demo weights: train the small HNF-Net-like network on BraTS-like phantoms, evaluate, save.

Data: a pool of procedural multi-modal brain MRI cases (``export.phantoms.brats.make_brats_case``,
96×96×80 voxels at 1 mm), each normalised with the service's own ``zscore_over_foreground`` on the
whole case *before* any cropping, exactly as ``services.pipelines.volume3d.segment_volume`` does.
Training draws random 64³ patches (the small variant's sliding-window patch) from the pool, most
of them centred on a random tumour voxel, with random flips along each axis; targets are the three
nested BraTS regions WT, TC, ET. Loss: binary cross-entropy with logits + soft Dice per region
(summed over the batch).

The held-out score runs the serving path end to end: fresh phantoms (seed + offset) in scanner
units → ``segment_volume`` (z-score, Gaussian-weighted sliding window with the registry's window,
sigmoid, threshold, painting into BraTS labels) with the PyTorch model behind ``infer`` → region
masks of the painted labels vs the phantom's labels.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from export.hashing import sha256_file
from export.training.loop import DemoSettings, environment, parallel_map, train_steps, write_record
from export.training.loop import progress as show_progress
from export.models.hnf_net import HnfNet, build_hnf_net
from export.phantoms.brats import BratsPhantom, make_brats_case
from export.registry import WEIGHTS_DIR, ModelSpec, get_spec
from services.pipelines.volume3d import regions_from_labels, segment_volume, zscore_over_foreground

WEIGHTS_FILE = "hnf_net_small_demo.safetensors"
RECORD_FILE = "hnf_net_small_demo.json"
MODEL = "hnf_net"
VARIANT = "small"
CASE_SHAPE = (96, 96, 80)  # (X, Y, Z) voxels at 1 mm, the phantom default
Corner = tuple[int, int, int]


@dataclass(frozen=True)
class TrainSettings(DemoSettings):
    """Hyper-parameters of the demo run (recorded in the JSON next to the weights)."""

    batch_size: int = 2
    pool_size: int = 100
    tumour_centred: float = 0.7  # fraction of patches centred on a random tumour voxel
    flips: bool = True  # random flip along each axis
    learning_rate: float = 3e-3
    eval_cases: int = 40


def demo_spec() -> ModelSpec:
    """The registry entry: regions, sliding window and threshold used by the service."""
    return get_spec(MODEL)


def patch_size() -> Corner:
    """The small variant's sliding-window patch (X, Y, Z) voxels, from the registry."""
    window = demo_spec().sliding_window(VARIANT)
    assert window is not None
    return window.patch


# ----------------------------------------------------------------------------- data


def _case(args: tuple[int, int]) -> BratsPhantom:
    seed, index = args
    return make_brats_case(np.random.default_rng([seed, index]), CASE_SHAPE)


def _training_case(args: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Case ``index`` for ``seed`` → (z-scored channels (4, X, Y, Z) float16, labels (X, Y, Z) uint8)."""
    case = _case(args)
    return zscore_over_foreground(case.channels).astype(np.float16), case.labels


def build_pool(seed: int, size: int, workers: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-generate ``size`` cases: inputs (N, 4, X, Y, Z) float16 z-scores, labels (N, X, Y, Z) uint8.

    Case i depends only on (seed, i), so the pool is the same for any number of workers.
    """
    results = parallel_map(_training_case, [(seed, i) for i in range(size)], workers, "phantoms", progress, chunksize=2)
    images = torch.from_numpy(np.stack([r[0] for r in results]))
    labels = torch.from_numpy(np.stack([r[1] for r in results]))
    return images, labels


def held_out_cases(seed: int, count: int, workers: int = 1, progress: bool = False) -> list[BratsPhantom]:
    """Fresh phantoms (raw scanner units) for evaluation: case i from generator (seed, i)."""
    return parallel_map(_case, [(seed, i) for i in range(count)], workers, "held-out phantoms", progress, chunksize=2)


def sample_corner(
    rng: np.random.Generator, labels: np.ndarray, patch: Corner, tumour_centred: float
) -> Corner:
    """Lower corner (x, y, z) of a ``patch`` inside a (X, Y, Z) ``labels`` volume (each side ≥ patch).

    With probability ``tumour_centred`` (and if the case has tumour) the patch is centred on a
    uniformly drawn tumour voxel (label > 0), shifted where needed to stay inside the volume;
    otherwise the corner is uniform over all valid positions.
    """
    shape = labels.shape
    if any(s < p for s, p in zip(shape, patch)):
        raise ValueError(f"volume {shape} smaller than patch {patch}")
    high = [s - p for s, p in zip(shape, patch)]
    if rng.random() < tumour_centred:
        tumour = np.flatnonzero(labels)
        if tumour.size:
            centre = np.unravel_index(int(tumour[rng.integers(tumour.size)]), shape)
            return tuple(int(np.clip(c - p // 2, 0, h)) for c, p, h in zip(centre, patch, high))  # type: ignore[return-value]
    return tuple(int(rng.integers(h + 1)) for h in high)  # type: ignore[return-value]


def region_targets(labels: torch.Tensor) -> torch.Tensor:
    """BraTS labels (B, X, Y, Z) uint8 → float32 region targets (B, 3, X, Y, Z) in registry channel order."""
    regions = sorted(demo_spec().regions, key=lambda r: r.channel)
    return torch.stack([torch.isin(labels, torch.tensor(r.labels, dtype=labels.dtype)) for r in regions], 1).float()


def sample_batch(
    images: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator, settings: TrainSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random mini-batch of patches: inputs (B, 4, *patch) float32, region targets (B, 3, *patch)."""
    patch = patch_size()
    xs, ys = [], []
    for case in rng.integers(len(images), size=settings.batch_size):
        x0, y0, z0 = sample_corner(rng, labels[case].numpy(), patch, settings.tumour_centred)
        crop = (slice(x0, x0 + patch[0]), slice(y0, y0 + patch[1]), slice(z0, z0 + patch[2]))
        x, y = images[case][(slice(None), *crop)].float(), labels[case][crop]
        if settings.flips:
            axes = [a for a in range(3) if rng.random() < 0.5]
            if axes:
                x, y = x.flip([a + 1 for a in axes]), y.flip(axes)
        xs.append(x)
        ys.append(y)
    return torch.stack(xs).contiguous(), region_targets(torch.stack(ys))


# ----------------------------------------------------------------------------- training


def region_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE with logits (mean over voxels) + Σ_regions (1 − soft Dice); logits, target (B, 3, X, Y, Z).

    Each region's Dice sums over the whole batch (+1 smoothing), so patches without a region
    (e.g. no enhancing tumour) give no 0/0 terms.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    dims = (0, 2, 3, 4)
    dice = (2 * (prob * target).sum(dims) + 1.0) / (prob.sum(dims) + target.sum(dims) + 1.0)
    return bce + (1.0 - dice).sum()


def train_model(
    model: HnfNet, images: torch.Tensor, labels: torch.Tensor, settings: TrainSettings, progress: bool
) -> list[float]:
    """AdamW with warm-up + cosine decay on random patches of the pool; returns the loss per step."""
    rng = np.random.default_rng([settings.seed, 1])
    model.train()

    def batch_loss() -> torch.Tensor:
        x, t = sample_batch(images, labels, rng, settings)
        return region_loss(model(x), t)

    losses = train_steps(list(model.parameters()), settings, batch_loss, progress, shown_mean_of=20)
    model.eval()
    return losses


# ----------------------------------------------------------------------------- evaluation


def torch_infer(model: HnfNet):
    """``infer`` for ``segment_volume``: (B, 4, *patch) float32 numpy → (B, 3, *patch) float32 logits."""
    model.eval()

    def infer(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()

    return infer


def region_dice(predictions: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, float]:
    """Dice per region (WT, TC, ET) of (X, Y, Z) BraTS label maps.

    ``<R>``: aggregated over cases, Σ 2|P∩T| / Σ (|P|+|T|). ``<R>_case_median`` / ``<R>_case_p10``:
    per-case Dice over the cases whose truth contains the region. ``<R>_absent_cases``: cases
    without the region; ``<R>_absent_clean``: how many of them have no predicted voxel of it.
    """
    regions = demo_spec().regions
    names = [r.name for r in sorted(regions, key=lambda r: r.channel)]
    inter = np.zeros(len(names))
    size = np.zeros(len(names))
    per_case: list[list[float]] = [[] for _ in names]
    absent, clean = np.zeros(len(names)), np.zeros(len(names))
    for pred, truth in zip(predictions, truths):
        p, t = regions_from_labels(pred, regions), regions_from_labels(truth, regions)
        for k in range(len(names)):
            i, s = float(np.logical_and(p[k], t[k]).sum()), float(p[k].sum() + t[k].sum())
            inter[k] += i
            size[k] += s
            if t[k].any():
                per_case[k].append(2 * i / s)
            else:
                absent[k] += 1
                clean[k] += float(not p[k].any())
    scores: dict[str, float] = {}
    for k, name in enumerate(names):
        scores[name] = float(2 * inter[k] / size[k]) if size[k] else 1.0
    for k, name in enumerate(names):
        if per_case[k]:
            scores[f"{name}_case_median"] = float(np.median(per_case[k]))
            scores[f"{name}_case_p10"] = float(np.percentile(per_case[k], 10))
        scores[f"{name}_absent_cases"] = float(absent[k])
        scores[f"{name}_absent_clean"] = float(clean[k])
    scores["cases"] = float(len(predictions))
    return scores


def evaluate(model: HnfNet, cases: list[BratsPhantom], progress: bool = False) -> dict[str, float]:
    """Held-out Dice of ``model`` on raw phantoms through the serving path (``segment_volume``)."""
    spec = demo_spec()
    window = spec.sliding_window(VARIANT)
    infer = torch_infer(model)
    predictions = [
        segment_volume(case.channels, infer, window, spec.regions, spec.threshold).labels  # type: ignore[arg-type]
        for case in show_progress(cases, len(cases), "evaluate", progress)
    ]
    return region_dice(predictions, [case.labels for case in cases])


# ----------------------------------------------------------------------------- entry point


def save_weights(model: HnfNet, path: Path, seed: int) -> None:
    """All state-dict tensors (parameters and the EMA bases ``mu``) as contiguous float32 safetensors."""
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"model": MODEL, "variant": VARIANT, "seed": str(seed)})
    path.chmod(0o644)


def train_hnf_net_demo(
    out_dir: Path = WEIGHTS_DIR, *, seed: int = 0, settings: TrainSettings | None = None, progress: bool = True
) -> dict:
    """Train the small HNF-Net-like network on phantoms, write ``<out_dir>/hnf_net_small_demo.{safetensors,json}``.

    Returns the training record (also written as JSON): settings, data description, wall times,
    held-out Dice through the serving path, the weights' SHA-256 and library versions.
    """
    settings = settings or TrainSettings(seed=seed)
    started = time.perf_counter()
    torch.set_num_threads(settings.threads)
    eval_seed = settings.seed + settings.eval_seed_offset
    # All phantoms are generated up front, in worker processes forked before torch computes anything.
    images, labels = build_pool(settings.seed, settings.pool_size, settings.workers, progress)
    held_out = held_out_cases(eval_seed, settings.eval_cases, settings.workers, progress)
    generated = time.perf_counter()
    torch.manual_seed(settings.seed)
    model = build_hnf_net(VARIANT)
    losses = train_model(model, images, labels, settings, progress)
    trained = time.perf_counter()
    scores = evaluate(model, held_out, progress)
    evaluated = time.perf_counter()

    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / WEIGHTS_FILE
    save_weights(model, weights_path, settings.seed)
    window = demo_spec().sliding_window(VARIANT)
    record = {
        "model": MODEL,
        "variant": VARIANT,
        "weights_file": WEIGHTS_FILE,
        "sha256": sha256_file(weights_path),
        "parameters": sum(p.numel() for p in model.parameters()),
        "settings": asdict(settings),
        "patch": list(patch_size()),
        "optimizer": "AdamW, linear warm-up then cosine decay",
        "loss": "BCE with logits + soft Dice per region (WT, TC, ET), Dice summed over the batch",
        "data": (
            "export.phantoms.brats.make_brats_case: procedural skull-stripped brain MRI (T1, T1ce, T2, "
            f"FLAIR in scanner units), {list(CASE_SHAPE)} voxels at 1 mm, one tumour (edema, enhancing rim, "
            "necrosis; some cases without necrosis or enhancement), bias fields, Rician noise; inputs "
            "z-scored per case with services.pipelines.volume3d.zscore_over_foreground before cropping; "
            f"random {patch_size()[0]}^3 patches, {settings.tumour_centred:.0%} centred on a tumour voxel, "
            + ("random flips per axis" if settings.flips else "no flips")
        ),
        "held_out": {
            "description": (
                f"{settings.eval_cases} fresh phantoms {list(CASE_SHAPE)} at 1 mm (seed {eval_seed}) through "
                f"services.pipelines.volume3d.segment_volume (patch {list(window.patch)}, overlap "  # type: ignore[union-attr]
                f"{window.overlap}, Gaussian sigma {window.gaussian_sigma_scale} x patch, threshold "  # type: ignore[union-attr]
                f"{demo_spec().threshold}); Dice of WT/TC/ET from the painted labels, aggregated over cases; "
                "per-case median and 10th percentile over cases containing the region"
            ),
            **scores,
        },
        "final_loss_mean_last_50": float(np.mean(losses[-50:])),
        "wall_time_s": {
            "generate": round(generated - started, 1),
            "train": round(trained - generated, 1),
            "evaluate": round(evaluated - trained, 1),
            "total": round(time.perf_counter() - started, 1),
        },
        **environment(settings.threads),
    }
    return write_record(out_dir / RECORD_FILE, record)

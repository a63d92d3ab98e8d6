"""Reproducible demo weights: train the small MAST on procedural polyp clips, evaluate, save.

Training follows MAST's recipe on phantom clips (``export.phantoms.polyp``): an anchor frame k and
a reference frame k+3 of the same clip go through the Siamese network (``Mast.forward_all``) and
all eight maps (S_g, S_5, S_4, S_3 of both branches) are supervised with a structure loss against
their own frame's mask. A fraction of the pairs uses the anchor as its own reference, the
service's default. Inputs are built with the serving code (``services.preprocess.prepare_rgb``);
targets are the masks resized with the image's own plan, so they stay pixel-aligned.

The held-out score runs the serving geometry: prepare_rgb → frame encoder → pair head (the two
serving graphs, equal to ``Mast.forward``) → ``unletterbox`` of the logits to the frame's grid →
logits ≥ 0 (sigmoid ≥ 0.5) → Dice against the phantom's source-resolution mask.
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
from export.training.loop import DemoSettings, parallel_map, run_summary, train_steps, write_record
from export.models.mast import MAST_CONFIGS, Mast, build_mast
from export.phantoms.polyp import FRAME_SHAPES, make_polyp_clip
from export.registry import WEIGHTS_DIR, get_spec
from services.contract import Preprocessing
from services.preprocess import letterbox, prepare_rgb, unletterbox

WEIGHTS_FILE = "mast_small_demo.safetensors"
RECORD_FILE = "mast_small_demo.json"
VARIANT = "small"
PAIR_GAP = 3  # reference = frame k + 3, as in MAST's training


@dataclass(frozen=True)
class TrainSettings(DemoSettings):
    """Hyper-parameters of the demo run (recorded in the JSON next to the weights)."""

    steps: int = 340
    batch_size: int = 8  # frame pairs per step
    pool_clips: int = 320
    clip_frames: int = 6  # pairs (k, k+3) for k = 0 .. clip_frames - 4
    self_reference_fraction: float = 0.2
    boundary_weight: float = 5.0  # structure-loss weight map 1 + w·|avgpool(mask) − mask|
    boundary_kernel: int = 31
    eval_clips: int = 40
    eval_frames: int = 8


def demo_preprocessing() -> Preprocessing:
    """The serving preprocessing of the small variant, from the registry (what medseg.json says)."""
    return get_spec("mast").preprocessing(VARIANT)


def _clip_example(args: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Clip ``index`` for ``seed`` → (inputs (T, 3, S, S) float16, targets (T, 1, S, S) uint8 0-255).

    Targets are the mask fractions after the image's own resize (×255, rounded).
    """
    seed, index, frames = args
    clip = make_polyp_clip(np.random.default_rng([seed, index]), frames)
    pre = demo_preprocessing()
    images, targets = [], []
    for frame, mask in zip(clip.frames, clip.masks):
        image, box = prepare_rgb(frame, "default", None, pre)
        images.append(image.astype(np.float16))
        target = np.clip(letterbox(mask.astype(np.float32), box, 0.0), 0.0, 1.0)
        targets.append(np.round(target * 255.0).astype(np.uint8)[None])
    return np.stack(images), np.stack(targets)


def build_pool(
    seed: int, clips: int, frames: int, workers: int, progress: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-generate ``clips`` clips: inputs (N, T, 3, S, S) float16, targets (N, T, 1, S, S) uint8.

    Clip i depends only on (seed, i), so the pool is the same for any number of workers.
    """
    jobs = [(seed, i, frames) for i in range(clips)]
    results = parallel_map(_clip_example, jobs, workers, "clips", progress, chunksize=4)
    return torch.from_numpy(np.stack([r[0] for r in results])), torch.from_numpy(np.stack([r[1] for r in results]))


def structure_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted BCE + weighted soft IoU, each averaged over the batch.

    ``logits``, ``target`` (soft mask in [0, 1]) and ``weight`` (boundary emphasis ≥ 1) are
    (N, 1, H, W); both terms are normalised per image.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    wbce = (weight * bce).sum(dim=(2, 3)) / weight.sum(dim=(2, 3))
    prob = torch.sigmoid(logits)
    inter = (prob * target * weight).sum(dim=(2, 3))
    union = ((prob + target) * weight).sum(dim=(2, 3))
    wiou = 1.0 - (inter + 1.0) / (union - inter + 1.0)
    return (wbce + wiou).mean()


def boundary_weight(target: torch.Tensor, strength: float, kernel: int) -> torch.Tensor:
    """(N, 1, H, W) mask → 1 + strength·|local mean − mask|: large near the outline, 1 far from it.

    The kernel×kernel box mean (padding excluded from the count) is computed as two 1-D means.
    """
    pad = kernel // 2
    local = F.avg_pool2d(target, (1, kernel), stride=1, padding=(0, pad), count_include_pad=False)
    local = F.avg_pool2d(local, (kernel, 1), stride=1, padding=(pad, 0), count_include_pad=False)
    return 1.0 + strength * (local - target).abs()


def sample_pairs(
    images: torch.Tensor, targets: torch.Tensor, settings: TrainSettings, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A mini-batch of (anchor, reference) inputs (B, 3, S, S) float32 and targets (B, 1, S, S).

    Anchor k, reference k + ``PAIR_GAP`` of a random clip, or (``self_reference_fraction`` of
    the pairs) the anchor itself; then a random flip applied to all four tensors of a pair.
    """
    b = settings.batch_size
    clip = torch.randint(images.shape[0], (b,), generator=generator)
    k = torch.randint(images.shape[1] - PAIR_GAP, (b,), generator=generator)
    self_ref = torch.rand(b, generator=generator) < settings.self_reference_fraction
    r = torch.where(self_ref, k, k + PAIR_GAP)
    anchor, reference = images[clip, k].float(), images[clip, r].float()
    t_anchor, t_reference = targets[clip, k].float() / 255.0, targets[clip, r].float() / 255.0
    flips = torch.randint(4, (b,), generator=generator)
    tensors = [anchor, reference, t_anchor, t_reference]
    for i in range(b):
        dims = [(), (2,), (1,), (1, 2)][int(flips[i])]  # per-sample (C, H, W)
        if dims:
            for x in tensors:
                x[i] = x[i].flip(dims)
    return anchor, reference, t_anchor, t_reference


def train_model(
    model: Mast, images: torch.Tensor, targets: torch.Tensor, settings: TrainSettings, progress: bool
) -> list[float]:
    """AdamW on random mini-batches of frame pairs; returns the loss per step."""
    generator = torch.Generator().manual_seed(settings.seed)
    model.train()

    def batch_loss() -> torch.Tensor:
        anchor, reference, t_anchor, t_reference = sample_pairs(images, targets, settings, generator)
        maps_a, maps_r = model.forward_all(anchor, reference)
        w_anchor = boundary_weight(t_anchor, settings.boundary_weight, settings.boundary_kernel)
        w_reference = boundary_weight(t_reference, settings.boundary_weight, settings.boundary_kernel)
        loss = sum(structure_loss(m, t_anchor, w_anchor) for m in maps_a)
        return loss + sum(structure_loss(m, t_reference, w_reference) for m in maps_r)

    return train_steps(list(model.parameters()), settings, batch_loss, progress)


def predict_clip(model: Mast, frames: np.ndarray, pre: Preprocessing, reference_index: list[int]) -> list[np.ndarray]:
    """Serving geometry for one clip (T, rows, cols, 3) uint8 → T masks (rows, cols) bool.

    Each frame is encoded once (serving graph 1); frame t's anchor features meet the stage-4
    map of frame ``reference_index[t]`` in the pair head (graph 2); logits are unletterboxed
    to the frame grid and thresholded at 0.
    """
    model.eval()
    prepared = [prepare_rgb(frame, "default", None, pre) for frame in frames]
    with torch.inference_mode():
        feats = model.encode(torch.from_numpy(np.stack([image for image, _ in prepared])))
        logits = model.head(feats, feats[2][reference_index]).numpy()
    return [unletterbox(l, box)[0] >= 0.0 for l, (_, box) in zip(logits, prepared)]


def dice_summary(predictions: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, float]:
    """Aggregated Dice Σ 2|P∩T| / Σ (|P|+|T|) over frames, per-frame median / 10th percentile
    (frames with a non-empty truth), and the aggregated Dice of small polyps (< 1 % of the frame)."""
    inter = size = small_inter = small_size = 0.0
    per_frame: list[float] = []
    for p, t in zip(predictions, truths):
        i, s = float(np.logical_and(p, t).sum()), float(p.sum() + t.sum())
        inter, size = inter + i, size + s
        if t.any():
            per_frame.append(2 * i / s)
            if t.mean() < 0.01:
                small_inter, small_size = small_inter + i, small_size + s
    return {
        "dice": 2 * inter / size if size else 1.0,
        "frame_median": float(np.median(per_frame)) if per_frame else float("nan"),
        "frame_p10": float(np.percentile(per_frame, 10)) if per_frame else float("nan"),
        "dice_small_polyps": 2 * small_inter / small_size if small_size else float("nan"),
        "frames": float(len(predictions)),
        "small_polyp_frames": float(sum(1 for t in truths if t.any() and t.mean() < 0.01)),
    }


def evaluate(model: Mast, seed: int, clips: int, frames: int) -> dict[str, float]:
    """Held-out Dice in two modes: "self_reference" (each frame is its own reference, every frame)
    and "pair" (reference = frame k + 3, frames k = 0 .. T − 4)."""
    pre = demo_preprocessing()
    results: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {"self_reference": ([], []), "pair": ([], [])}
    for index in range(clips):
        clip = make_polyp_clip(np.random.default_rng([seed, index]), frames)
        truths = list(clip.masks)
        own = predict_clip(model, clip.frames, pre, list(range(frames)))
        ahead = predict_clip(model, clip.frames, pre, [min(t + PAIR_GAP, frames - 1) for t in range(frames)])
        results["self_reference"][0].extend(own)
        results["self_reference"][1].extend(truths)
        results["pair"][0].extend(ahead[: frames - PAIR_GAP])
        results["pair"][1].extend(truths[: frames - PAIR_GAP])
    out: dict[str, float] = {}
    for mode, (predictions, truths) in results.items():
        for key, value in dice_summary(predictions, truths).items():
            out[f"{key}_{mode}" if key != "dice" else f"dice_{mode}"] = value
    return out


def train_mast_demo(
    out_dir: Path = WEIGHTS_DIR, *, seed: int = 0, steps: int = TrainSettings.steps, progress: bool = True
) -> dict:
    """Train the small MAST on polyp phantoms, write ``<out_dir>/mast_small_demo.{safetensors,json}``.

    Returns the training record (also written as JSON): settings, data description, wall time,
    held-out Dice in both reference modes, the weights' SHA-256 and library versions.
    """
    settings = TrainSettings(seed=seed, steps=steps)
    started = time.perf_counter()
    torch.set_num_threads(settings.threads)
    images, targets = build_pool(settings.seed, settings.pool_clips, settings.clip_frames, settings.workers, progress)
    generated = time.perf_counter()
    torch.manual_seed(settings.seed)
    model = build_mast(VARIANT)
    losses = train_model(model, images, targets, settings, progress)
    trained = time.perf_counter()
    eval_seed = settings.seed + settings.eval_seed_offset
    held_out = evaluate(model, eval_seed, settings.eval_clips, settings.eval_frames)
    evaluated = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / WEIGHTS_FILE
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items() if v.is_floating_point()}
    state.update({k: v.detach().contiguous() for k, v in model.state_dict().items() if not v.is_floating_point()})
    save_file(state, str(weights_path), metadata={"model": "mast", "variant": VARIANT, "seed": str(seed)})
    weights_path.chmod(0o644)
    size = MAST_CONFIGS[VARIANT].input_size
    record = {
        "model": "mast",
        "variant": VARIANT,
        "weights_file": WEIGHTS_FILE,
        "sha256": sha256_file(weights_path),
        "size_bytes": weights_path.stat().st_size,
        "seed": settings.seed,
        "settings": asdict(settings),
        "optimizer": "AdamW, linear warm-up then cosine decay",
        "loss": (
            "structure loss on all 8 maps (S_g, S_5, S_4, S_3 of the anchor and reference branches, each "
            "against its own frame's mask): weighted BCE + weighted soft IoU, per-pixel weight "
            f"1 + {settings.boundary_weight:g}·|avgpool{settings.boundary_kernel}(mask) − mask|"
        ),
        "data": (
            f"export.phantoms.polyp.make_polyp_clip: {settings.pool_clips} procedural colonoscopy clips of "
            f"{settings.clip_frames} frames ({[list(s) for s in FRAME_SHAPES]} px): textured mucosa with folds, "
            "vessels, lumen, vignetting, specular highlights, noise; one lobulated polyp (radius 4-30 % of the "
            "short side, 25 % small, 20 % cut by the border) moving and deforming, camera jitter. Pairs "
            f"(k, k+{PAIR_GAP}); {settings.self_reference_fraction:.0%} self-reference pairs; random flips. "
            f"Inputs from services.preprocess.prepare_rgb (stretch to {size}x{size}, /255, ImageNet mean/std); "
            "targets = the mask resized with the same plan"
        ),
        "held_out": {
            "description": (
                f"{settings.eval_clips} fresh clips x {settings.eval_frames} frames (seed {eval_seed}), serving "
                "geometry (prepare_rgb -> frame encoder -> pair head -> unletterbox -> logits >= 0); "
                "self_reference: every frame with itself as reference; pair: frames 0..T-4 with reference "
                f"k+{PAIR_GAP}; Dice aggregated over frames, frame median/p10 over frames with a polyp, "
                "small polyps = truth < 1 % of the frame"
            ),
            **held_out,
        },
        **run_summary(losses, (started, generated, trained, evaluated), settings.threads),
    }
    return write_record(out_dir / RECORD_FILE, record)

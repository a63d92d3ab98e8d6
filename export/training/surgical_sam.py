"""Reproducible demo weights: train the whole ``small`` SurgicalSAM (EndoVis2018, nt = 2) on phantoms.

No pretrained SAM exists here, so encoder, prompt encoder, prototypes and decoder all train from
scratch on :func:`export.phantoms.surgical.make_surgical_frame` frames. Inputs come from the
serving code (``services.preprocess.prepare_rgb`` with the model card's letterbox and SAM pixel
statistics); the loss is taken on the logits mapped back to the frame with the serving geometry
(upsample to the encoder side, crop to the resized frame, resize to the frame), so the targets are
the phantom's exact labels.

Per frame the prompted classes are those present plus, with probability ``absent_prob``, one
absent class whose target is empty. Loss per prompted class: BCE + soft Dice on mask 0, plus the
MSE between the predicted IoU and the IoU of the thresholded mask (as SAM trains its IoU head).
The held-out score runs the serving path (prepare_rgb → encoder → prompt stage →
``frame_class_masks``: logits ≥ 0, merge by ascending predicted IoU) in two modes: the present
classes prompted (the published protocol) and all 7 classes prompted (the service's default).
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
from export.models.surgical_sam import NUM_CLASSES, SURGICAL_SAM_CONFIGS, SurgicalSam, build_surgical_sam
from export.phantoms.surgical import SurgicalFrame, make_surgical_frame
from export.registry import WEIGHTS_DIR, get_spec
from export.training.loop import DemoSettings, parallel_map, run_summary, train_steps, write_record
from services.contract import Preprocessing
from services.pipelines.class_prompted import frame_class_masks
from services.preprocess import Letterbox, prepare_rgb

WEIGHTS_FILE = "surgical_sam_small_demo.safetensors"
RECORD_FILE = "surgical_sam_small_demo.json"
VARIANT = "small"
DATASET = "endovis2018"
FRAME_SHAPE = (256, 320)  # (rows, cols): the EndoVis 1024×1280 aspect ratio, scaled down


@dataclass(frozen=True)
class TrainSettings(DemoSettings):
    """Hyper-parameters of the demo run (recorded in the JSON next to the weights)."""

    steps: int = 3000
    batch_size: int = 8  # frames per step; each frame prompts 1-4 classes
    pool_size: int = 3000
    warmup_steps: int = 30
    absent_prob: float = 0.5  # chance that a frame also prompts one absent class (empty target)
    iou_weight: float = 1.0
    prototype_init_std: float = 256**-0.5  # ours: unit-variance similarities f·p at the start
    eval_cases: int = 100


def demo_preprocessing() -> Preprocessing:
    """The serving preprocessing of the small variant, from the registry (what medseg.json says)."""
    return get_spec("surgical_sam").preprocessing(VARIANT)


def _pool_example(args: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``index`` of the pool for ``seed`` → (input (3, S, S) float16, labels (H, W) uint8)."""
    seed, index = args
    frame = make_surgical_frame(np.random.default_rng([seed, index]), FRAME_SHAPE)
    image, _ = prepare_rgb(frame.rgb, "default", None, demo_preprocessing())
    return image.astype(np.float16), frame.labels


def build_pool(seed: int, size: int, workers: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-generate ``size`` frames: inputs (N, 3, S, S) float16, labels (N, H, W) uint8.

    Frame i depends only on (seed, i), so the pool is the same for any number of workers.
    """
    results = parallel_map(_pool_example, [(seed, i) for i in range(size)], workers, "frames", progress, chunksize=32)
    return torch.from_numpy(np.stack([r[0] for r in results])), torch.from_numpy(np.stack([r[1] for r in results]))


def prompted_classes(labels: torch.Tensor, absent_prob: float, generator: torch.Generator) -> torch.Tensor:
    """Labels (H, W) → 1-based class ids (K,) int64: the classes present, plus sometimes one absent class."""
    present = [c for c in range(1, NUM_CLASSES + 1) if bool((labels == c).any())]
    absent = [c for c in range(1, NUM_CLASSES + 1) if c not in present]
    if absent and float(torch.rand((), generator=generator)) < absent_prob:
        present.append(absent[int(torch.randint(len(absent), (), generator=generator))])
    return torch.tensor(present, dtype=torch.int64)


def frame_logits(low_res: torch.Tensor, box: Letterbox) -> torch.Tensor:
    """Torch twin of ``low_res_to_source``: (K, 1, h4, w4) → (K, rows, cols) logits on the frame."""
    canvas = F.interpolate(low_res, size=box.size, mode="bilinear", align_corners=False)
    crop = canvas[:, :, : box.scaled[0], : box.scaled[1]]
    return F.interpolate(crop, size=box.source, mode="bilinear", align_corners=False)[:, 0]


def mask_loss(logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor, iou_weight: float) -> torch.Tensor:
    """logits (K, H, W), iou_pred (K,), target (K, H, W) in {0, 1} → BCE + soft Dice + iou_weight · MSE(IoU).

    Dice is per mask with +1 smoothing (an empty target drives the mask to empty); the IoU target
    is that of the thresholded mask, 1 when prediction and target are both empty.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    dice = 1 - (2 * (prob * t).sum(1) + 1) / (prob.sum(1) + t.sum(1) + 1)
    with torch.no_grad():
        hard = (logits > 0).flatten(1).float()
        inter, union = (hard * t).sum(1), ((hard + t) > 0).float().sum(1)
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return bce + dice.mean() + iou_weight * F.mse_loss(iou_pred, iou)


def round_to_float16(model: SurgicalSam) -> None:
    """Round every floating parameter and buffer to float16 precision in place (kept as float32):
    the weights are stored as float16 (13 MB instead of 27), loaded back into float32 modules."""
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())


def init_for_scratch(model: SurgicalSam, prototype_std: float) -> None:
    """Re-draw the prototypes with std ``prototype_std`` (upstream: N(0, 1), meant for a pretrained
    encoder). With a fresh encoder the similarities f·p would have std ~16 and swamp the dense prompt."""
    with torch.no_grad():
        model.prototypes.class_embeddings.weight.normal_(0.0, prototype_std)


def train_model(
    model: SurgicalSam, images: torch.Tensor, labels: torch.Tensor, settings: TrainSettings, box: Letterbox, progress: bool
) -> list[float]:
    """AdamW on random mini-batches of the pool (all trainable parameters); returns the loss per step."""
    generator = torch.Generator().manual_seed(settings.seed)
    model.train()

    def batch_loss() -> torch.Tensor:
        index = torch.randint(len(images), (settings.batch_size,), generator=generator)
        embeddings = model.image_encoder(images[index].float())
        loss = torch.zeros(())
        for embedding, frame_labels in zip(embeddings, labels[index]):
            ids = prompted_classes(frame_labels, settings.absent_prob, generator)
            low_res, iou = model.predict(embedding.unsqueeze(0), ids)
            target = (frame_labels.unsqueeze(0) == ids[:, None, None]).float()
            loss = loss + mask_loss(frame_logits(low_res, box), iou[:, 0], target, settings.iou_weight)
        return loss / settings.batch_size

    params = [p for p in model.parameters() if p.requires_grad]
    return train_steps(params, settings, batch_loss, progress, clip_grad_norm=1.0)


# --------------------------------------------------------------------------------- evaluation


def predict_frame(model: SurgicalSam, rgb: np.ndarray, class_ids: tuple[int, ...]) -> np.ndarray:
    """Serving path for one frame: (H, W, 3) uint8 and prompted ids → merged labels (H, W) uint8."""
    image, box = prepare_rgb(rgb, "default", None, demo_preprocessing())
    with torch.inference_mode():
        low_res, iou = model(torch.from_numpy(image)[None], torch.tensor(class_ids, dtype=torch.int64))
    return frame_class_masks(low_res.numpy(), iou.numpy(), class_ids, box, 0.5).labels


def held_out_frames(seed: int, count: int) -> list[SurgicalFrame]:
    return [make_surgical_frame(np.random.default_rng([seed, i]), FRAME_SHAPE) for i in range(count)]


def iou_scores(predictions: list[np.ndarray], frames: list[SurgicalFrame]) -> dict[str, float]:
    """Mean IoU over (frame, present class) pairs of the merged label maps, its median and 10th
    percentile, per-class means, and for absent classes how many (frame, absent class) pairs got pixels."""
    pairs: list[tuple[int, float]] = []
    absent_hits, absent_pairs = 0, 0
    for pred, frame in zip(predictions, frames):
        for c in range(1, NUM_CLASSES + 1):
            p, t = pred == c, frame.labels == c
            if t.any():
                pairs.append((c, float((p & t).sum() / (p | t).sum())))
            else:
                absent_pairs += 1
                absent_hits += int(p.any())
    values = np.array([v for _, v in pairs])
    scores = {
        "mean_iou_present": float(values.mean()),
        "median_iou_present": float(np.median(values)),
        "p10_iou_present": float(np.percentile(values, 10)),
        "pairs": float(len(values)),
        "absent_pairs_with_pixels": float(absent_hits),
        "absent_pairs": float(absent_pairs),
    }
    for c in range(1, NUM_CLASSES + 1):
        per_class = [v for k, v in pairs if k == c]
        if per_class:
            scores[f"class_{c}_iou"] = float(np.mean(per_class))
    return scores


def evaluate(model: SurgicalSam, seed: int, count: int) -> dict[str, float]:
    """Held-out scores of both prompting modes on ``count`` fresh frames (flat, for the model card)."""
    model.eval()
    frames = held_out_frames(seed, count)
    present = [predict_frame(model, f.rgb, tuple(sorted(i.class_id for i in f.instruments))) for f in frames]
    everything = [predict_frame(model, f.rgb, tuple(range(1, NUM_CLASSES + 1))) for f in frames]
    scores = {f"{k}_present_prompted": v for k, v in iou_scores(present, frames).items()}
    scores.update({f"{k}_all_prompted": v for k, v in iou_scores(everything, frames).items()})
    return scores


# --------------------------------------------------------------------------------- entry point


def train_surgical_sam_demo(
    out_dir: Path = WEIGHTS_DIR, *, seed: int = 0, steps: int = TrainSettings.steps, progress: bool = True, **overrides
) -> dict:
    """Train the small SurgicalSAM on phantoms, write ``<out_dir>/surgical_sam_small_demo.{safetensors,json}``.

    ``overrides`` replace other :class:`TrainSettings` fields. Returns the training record (also
    written as JSON): settings, data description, wall time, held-out IoU, the weights' SHA-256.
    """
    settings = TrainSettings(seed=seed, steps=steps, **overrides)
    started = time.perf_counter()
    torch.set_num_threads(settings.threads)
    images, labels = build_pool(settings.seed, settings.pool_size, settings.workers, progress)
    _, box = prepare_rgb(np.zeros((*FRAME_SHAPE, 3), np.uint8), "default", None, demo_preprocessing())
    generated = time.perf_counter()
    torch.manual_seed(settings.seed)
    model = build_surgical_sam(VARIANT, DATASET)
    init_for_scratch(model, settings.prototype_init_std)
    losses = train_model(model, images, labels, settings, box, progress)
    trained = time.perf_counter()
    eval_seed = settings.seed + settings.eval_seed_offset
    round_to_float16(model)  # the committed file is float16 (under 20 MiB); evaluate what it holds
    held_out = evaluate(model, eval_seed, settings.eval_cases)
    evaluated = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / WEIGHTS_FILE
    state = {k: (v.half() if v.is_floating_point() else v).detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights_path), metadata={"model": "surgical_sam", "variant": VARIANT, "seed": str(seed)})
    weights_path.chmod(0o644)
    size = SURGICAL_SAM_CONFIGS[VARIANT].image_size
    record = {
        "model": "surgical_sam",
        "variant": VARIANT,
        "dataset": DATASET,
        "weights_file": WEIGHTS_FILE,
        "sha256": sha256_file(weights_path),
        "size_bytes": weights_path.stat().st_size,
        "stored_dtype": "float16 (rounded before the held-out evaluation)",
        "seed": settings.seed,
        "settings": asdict(settings),
        "trained_parts": (
            "all (image encoder, prompt encoder, prototypes, mask decoder) from scratch; pn_cls_embeddings "
            "frozen at their random initialisation, as upstream freezes them"
        ),
        "optimizer": "AdamW, linear warm-up then cosine decay, gradient-norm clip 1.0",
        "loss": (
            "per prompted class: BCE + soft Dice on mask-0 logits in frame coordinates + "
            f"{settings.iou_weight:g} x MSE(predicted IoU, IoU of the thresholded mask)"
        ),
        "data": (
            f"export.phantoms.surgical.make_surgical_frame: {settings.pool_size} procedural endoscopic frames "
            f"{list(FRAME_SHAPE)} px, 1-3 instruments of distinct EndoVis2018 classes (class-specific shaft "
            "width, shade and jaw), occluding each other, textured tissue, vessels, specular highlights, blur "
            f"and noise. Inputs from services.preprocess.prepare_rgb (longest side to {size}, /255, SAM pixel "
            "mean/std, zero padding); prompts: the present classes plus, with probability absent_prob, one "
            "absent class with an empty target"
        ),
        "held_out": {
            "description": (
                f"{settings.eval_cases} fresh frames (seed {eval_seed}), serving path (prepare_rgb -> encoder -> "
                "prompt stage -> logits >= 0 -> merge by ascending predicted IoU); IoU over (frame, present class) "
                "pairs of the merged label map; *_present_prompted: the classes present are prompted (the "
                "published protocol); *_all_prompted: all 7 classes are prompted"
            ),
            **held_out,
        },
        **run_summary(losses, (started, generated, trained, evaluated), settings.threads),
    }
    return write_record(out_dir / RECORD_FILE, record)

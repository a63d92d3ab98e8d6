"""Phantom quality of every model through the HTTP API, and two back ends compared on it.

    python -m load quality --backends embedded openvino      # services started here, side by side
    python -m load quality --url http://127.0.0.1:3000       # one running service's scores

Each model has fixed phantom cases of known truth (``CASES``: the same generators and seeds
the HTTP quality tests use): CT slices as DICOM for swtr_unet, polyp frames as PNG for mast,
surgical frames with their present classes for surgical_sam, BraTS-like NIfTI volumes for
hnf_net. ``measure`` posts them and scores the label maps (global Dice per label or region,
mean IoU per (frame, class)); ``compare`` gives, per model, the scores of both back ends, their
largest difference and the share of pixels (voxels) whose label agrees.
"""

from __future__ import annotations

import argparse
import gzip
import io
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from export.sample_requests import png_bytes

Files = dict[str, tuple[str, bytes, str]]


@dataclass(frozen=True)
class Case:
    """One request and the truth of its answer: (rows, cols) or (X, Y, Z) labels."""

    route: str
    files: Files
    form: dict[str, str]
    truth: np.ndarray


@dataclass
class Quality:
    """A model's scores on its cases (name → value, higher is better) and the label maps."""

    model: str
    scores: dict[str, float]
    label_maps: list[np.ndarray]


def _ct_cases() -> list[Case]:
    from export.phantoms.ct_liver import make_ct_slice
    from export.phantoms.dicom_writer import write_ct_slice

    cases = []
    for seed, shape, spacing in ((1001, (512, 512), (0.7, 0.9)), (1201, (400, 512), (0.75, 0.75)),
                                 (1301, (512, 512), (0.8, 0.8))):
        found = 0
        for offset in range(200):
            phantom = make_ct_slice(np.random.default_rng(seed + offset), shape=shape, spacing_mm=spacing)
            if (phantom.labels == 2).sum() < 400:  # lesions large enough to score
                continue
            data = write_ct_slice(phantom.hu, spacing)
            cases.append(Case("/v1/segment", {"file": ("slice.dcm", data, "application/dicom")},
                              {"model": "swtr_unet", "output": "png"}, phantom.labels))
            found += 1
            if found == 3:
                break
    return cases


def _polyp_cases() -> list[Case]:
    from export.phantoms.polyp import make_polyp_clip

    cases = []
    for index, shape in enumerate(((288, 384), (240, 320), (256, 256))):
        clip = make_polyp_clip(np.random.default_rng(3001 + index), frames=6, shape=shape)
        for k in (0, 2):
            cases.append(Case("/v1/segment", {"file": ("frame.png", png_bytes(clip.frames[k]), "image/png")},
                              {"model": "mast", "output": "png"}, clip.masks[k].astype(np.uint8)))
            files = {"file": ("frame.png", png_bytes(clip.frames[k]), "image/png"),
                     "reference": ("reference.png", png_bytes(clip.frames[k + 3]), "image/png")}
            cases.append(Case("/v1/segment", files, {"model": "mast", "output": "png"}, clip.masks[k].astype(np.uint8)))
    return cases


def _surgical_cases(frames: int = 40) -> list[Case]:
    from export.phantoms.surgical import make_surgical_frame

    cases = []
    for index in range(frames):
        frame = make_surgical_frame(np.random.default_rng([4001, index]), (256, 320))
        present = sorted(int(c) for c in np.unique(frame.labels) if c)
        cases.append(Case("/v1/segment", {"file": ("frame.png", png_bytes(frame.rgb), "image/png")},
                          {"model": "surgical_sam", "output": "png", "classes": ",".join(map(str, present))},
                          frame.labels))
    return cases


def _brats_cases() -> list[Case]:
    import nibabel as nib

    from export.phantoms.brats import make_brats_case

    affine = np.array([[-1.0, 0, 0, 90.0], [0, -1.0, 0, 126.0], [0, 0, 1.0, -72.0], [0, 0, 0, 1.0]])  # BraTS-like
    cases = []
    for seed in (2001, 2002, 2003):
        case = make_brats_case(np.random.default_rng(seed), shape=(96, 96, 80))
        files = {name: (f"{name}.nii.gz", gzip.compress(nib.Nifti1Image(np.round(c).astype(np.int16), affine).to_bytes()),
                        "application/gzip") for name, c in zip(("t1", "t1ce", "t2", "flair"), case.channels)}
        cases.append(Case("/v1/segment/volume", files, {"model": "hnf_net", "output": "nifti"}, case.labels))
    return cases


def _dice(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """Global Dice over (prediction, truth) boolean pairs: sum 2|P∩T| / sum (|P| + |T|)."""
    inter = sum(float(np.logical_and(p, t).sum()) for p, t in pairs)
    total = sum(float(p.sum() + t.sum()) for p, t in pairs)
    return 1.0 if total == 0 else 2.0 * inter / total


def _score_ct(maps: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> dict[str, float]:
    return {"liver Dice": _dice([(m > 0, t > 0) for m, t in zip(maps, truths)]),
            "lesion Dice": _dice([(m == 2, t == 2) for m, t in zip(maps, truths)])}


def _score_polyp(maps: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> dict[str, float]:
    return {"polyp Dice": _dice([(m == 1, t > 0) for m, t in zip(maps, truths)])}


def _score_surgical(maps: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> dict[str, float]:
    ious = []
    for predicted, truth in zip(maps, truths):
        for c in (int(c) for c in np.unique(truth) if c):
            p, t = predicted == c, truth == c
            ious.append(float((p & t).sum() / (p | t).sum()))
    return {"mean IoU": float(np.mean(ious))}


def _score_brats(maps: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> dict[str, float]:
    from export.phantoms.brats import brats_regions

    regions = [(brats_regions(m), brats_regions(t)) for m, t in zip(maps, truths)]
    return {f"{name} Dice": _dice([(p[k], t[k]) for p, t in regions]) for k, name in enumerate(("WT", "TC", "ET"))}


# Per served model: its phantom cases and how its label maps are scored. A model without an
# entry fails tests/integration/test_backend_quality.py.
CASES: dict[str, tuple[Callable[[], list[Case]], Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], dict[str, float]]]] = {
    "swtr_unet": (_ct_cases, _score_ct),
    "mast": (_polyp_cases, _score_polyp),
    "surgical_sam": (_surgical_cases, _score_surgical),
    "hnf_net": (_brats_cases, _score_brats),
}


def label_map(response: httpx.Response) -> np.ndarray:
    """A PNG label map or a NIfTI label volume answer → its labels."""
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
    if response.headers.get("content-type", "").startswith("application/gzip"):
        import nibabel as nib

        return np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(response.content)).dataobj)
    return np.asarray(Image.open(io.BytesIO(response.content)))


def measure(url: str, model: str, cases: Sequence[Case] | None = None) -> Quality:
    """Post ``model``'s cases to the service at ``url`` and score the answers."""
    build, score = CASES[model]
    cases = build() if cases is None else cases
    with httpx.Client(base_url=url, timeout=300, trust_env=False) as client:
        maps = [label_map(client.post(case.route, files=case.files, data=case.form)) for case in cases]
    return Quality(model, score(maps, [case.truth for case in cases]), maps)


def agreement(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> float:
    """The share of pixels (voxels) with the same label in both sets of maps."""
    same = sum(int((a == b).sum()) for a, b in zip(reference, candidate))
    return same / sum(a.size for a in reference)


def compare(reference: Quality, candidate: Quality) -> dict[str, object]:
    """Both back ends' scores, the largest score difference and the label agreement."""
    deltas = {name: candidate.scores[name] - value for name, value in reference.scores.items()}
    return {
        "reference": {k: round(v, 4) for k, v in reference.scores.items()},
        "candidate": {k: round(v, 4) for k, v in candidate.scores.items()},
        "largest_score_change": round(max(abs(d) for d in deltas.values()), 4),
        "agreement": round(agreement(reference.label_maps, candidate.label_maps), 6),
    }


def _services(backends: Sequence[str], stack: ExitStack, workdir: Path) -> Iterator[tuple[str, str]]:
    from load.local_service import ROOT, local_service

    for backend in backends:
        service = stack.enter_context(local_service(ROOT / "model_repository", workdir / backend,
                                                    env={"MEDSEG_BACKEND": backend}))
        yield backend, service.url


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backends", nargs="+", default=["embedded", "openvino"],
                        help="back ends of services started here; the first is the reference")
    parser.add_argument("--url", help="score one running service instead")
    parser.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))


def run(args: argparse.Namespace) -> int:
    import tempfile

    with ExitStack() as stack:
        urls = ([("service", args.url)] if args.url else
                list(_services(args.backends, stack, Path(stack.enter_context(tempfile.TemporaryDirectory())))))
        for model in args.models:
            cases = CASES[model][0]()
            results = [(name, measure(url, model, cases)) for name, url in urls]
            line = "; ".join(f"{name} " + ", ".join(f"{k} {v:.4f}" for k, v in q.scores.items()) for name, q in results)
            print(f"{model}: {line}")
            for name, quality in results[1:]:
                verdict = compare(results[0][1], quality)
                print(f"  {name} vs {results[0][0]}: largest score change {verdict['largest_score_change']:+.4f}, "
                      f"labels agree on {verdict['agreement']:.4%}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``python -m export {build,build-plans,train-demo} ...`` (benchmarks: ``python -m load``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"


def _build(args: argparse.Namespace) -> int:
    from export.repository import build_model_folder
    from export.registry import REGISTRY, get_spec

    names = list(REGISTRY) if args.model == "all" else [args.model]
    for name in names:
        build_model_folder(
            get_spec(name), args.variant, args.repository, weights=args.weights, sam_checkpoint=args.sam_checkpoint,
            target=args.target,
        )
    return 0


def _build_plans(args: argparse.Namespace) -> int:
    from export.triton.tensorrt_plans import build_plans

    build_plans(args.repository, trtexec=args.trtexec)
    return 0


def _train_demo(args: argparse.Namespace) -> int:
    from export.registry import WEIGHTS_DIR, get_entry

    trainer = get_entry(args.model).train_demo
    if trainer is None:
        raise SystemExit(f"no demo-weight trainer for {args.model!r}")
    trainer(WEIGHTS_DIR, seed=args.seed)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="export a model into the Triton model repository")
    build.add_argument("--model", required=True, help="registered model name, or 'all'")
    build.add_argument("--variant", default="small", help="network size: small | paper (SurgicalSAM also vit_b, vit_l)")
    build.add_argument("--weights", type=Path, default=None, help="weights file (default: demo weights if any)")
    build.add_argument(
        "--sam-checkpoint",
        type=Path,
        default=None,
        help="stock Segment Anything file (sam_vit_h_4b8939.pth...) under official SurgicalSAM --weights",
    )
    build.add_argument(
        "--target",
        choices=("cpu", "gpu"),
        default="cpu",
        help="Triton configs: cpu = python backend running ONNX Runtime (runs here); "
        "gpu = ONNX Runtime platform with TensorRT FP16 on GPU instances (production)",
    )
    build.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    build.set_defaults(run=_build)

    plans = sub.add_parser(
        "build-plans",
        help="on the GPU host: build a TensorRT plan per graph of a --target gpu repository and serve it as tensorrt_plan",
    )
    plans.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    plans.add_argument("--trtexec", default="trtexec", help="TensorRT 10 trtexec binary")
    plans.set_defaults(run=_build_plans)

    train = sub.add_parser("train-demo", help="train the small variant's demo weights on phantoms")
    train.add_argument("model")
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(run=_train_demo)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

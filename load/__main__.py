"""Command line: ``python -m load {bench,bench-triton,bench-batching,bench-spinning,bench-pacs,bench-stream,bench-pipeline,bench-int8,bench-backends} ...``: the
model and service benchmarks; ``python -m load capacity ...``: the largest load held within the
SLOs. Burst and answer comparison: ``python -m load.burst``, ``python -m load.compare_answers``;
load tests: ``make load`` (``python -m load.load_run``) or ``locust -f load/locustfile.py``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"


def _bench(args: argparse.Namespace) -> int:
    from export.registry import REGISTRY
    from load.bench import run_benchmark

    models = list(REGISTRY) if args.model == "all" else [args.model]
    for model in models:
        run_benchmark(model, variants=args.variants, repeats=args.repeats, warmup=args.warmup)
    return 0


def _bench_triton(args: argparse.Namespace) -> int:
    from export.registry import REGISTRY
    from load.bench_triton import run_triton_benchmark

    models = list(REGISTRY) if args.model == "all" else [args.model]
    run_triton_benchmark(args.repository, models, args.requests)
    return 0


def _bench_spinning(args: argparse.Namespace) -> int:
    from load.bench_spinning import run_spinning_benchmark

    run_spinning_benchmark(args.repository, args.rounds)
    return 0


def _bench_batching(args: argparse.Namespace) -> int:
    from load.bench_batching import run_batching_benchmark

    run_batching_benchmark(args.compute_ms, args.row_ms, args.burst, args.lone)
    if args.service:
        from load.bench_batching import run_service_benchmark

        run_service_benchmark(args.repository)
    return 0


def _bench_pacs(args: argparse.Namespace) -> int:
    from load.bench_pacs import run_pacs_benchmark

    run_pacs_benchmark(args.slices, args.rounds, args.quiet, args.stable_age)
    return 0


def _bench_stream(args: argparse.Namespace) -> int:
    from load.bench_stream import run_stream_benchmark

    run_stream_benchmark(args.frames, tuple(args.streams), tuple(args.models))
    return 0


def _bench_pipeline(args: argparse.Namespace) -> int:
    from load.bench_pipeline import run_pipeline_benchmark

    run_pipeline_benchmark(args.size, args.model, args.repeats, tuple(args.backends))
    return 0


def _bench_int8(args: argparse.Namespace) -> int:
    from load.bench_int8 import run_int8_benchmark

    run_int8_benchmark(args.calibration, args.cases, args.repeats)
    return 0


def _bench_backends(args: argparse.Namespace) -> int:
    from export.registry import REGISTRY
    from load.bench_backends import run_backend_benchmark

    models = list(REGISTRY) if args.model == "all" else [args.model]
    targets = [(m, v) for m in models for v in args.variants if v in REGISTRY[m].spec.variants]
    run_backend_benchmark(targets, args.repeats, args.http, args.warmup, args.max_batch)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="PyTorch eager vs ONNX Runtime vs HTTP latency and throughput")
    bench.add_argument("--model", default="all", help="registered model name, or 'all'")
    bench.add_argument("--variants", nargs="+", default=["small", "paper"])
    bench.add_argument("--repeats", type=int, default=10)
    bench.add_argument("--warmup", type=int, default=2, help="untimed calls before each timed series")
    bench.set_defaults(run=_bench)

    pacs = sub.add_parser("bench-pacs", help="STOW-RS throughput vs Orthanc; Orthanc -> SEG round trip by stage")
    pacs.add_argument("--slices", type=int, default=200)
    pacs.add_argument("--rounds", type=int, default=3)
    pacs.add_argument("--quiet", type=float, default=2.0, help="MEDSEG_SERIES_QUIET_S of the service")
    pacs.add_argument("--stable-age", type=int, default=2, help="Orthanc's StableAge (s)")
    pacs.set_defaults(run=_bench_pacs)

    stream = sub.add_parser("bench-stream", help="WS /v1/stream vs per-frame HTTP POSTs, 1/2/4 sources at 30 fps")
    stream.add_argument("--frames", type=int, default=90, help="frames per source")
    stream.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4])
    stream.add_argument("--models", nargs="+", default=["surgical_sam", "mast"])
    stream.set_defaults(run=_bench_stream)

    pipeline = sub.add_parser("bench-pipeline", help="a 512² slice stage by stage in-process, and over HTTP per back end")
    pipeline.add_argument("--size", type=int, default=512, help="slice rows and columns")
    pipeline.add_argument("--model", default="swtr_unet")
    pipeline.add_argument("--repeats", type=int, default=50)
    pipeline.add_argument("--backends", nargs="*", default=["embedded", "openvino"], help="HTTP rows (none: skip)")
    pipeline.set_defaults(run=_bench_pipeline)

    backends = sub.add_parser("bench-backends",
                              help="ORT fp32 vs OpenVINO f32 vs OpenVINO bf16 per graph, GFLOP/s against the CPU's peaks")
    backends.add_argument("--model", default="all", help="registered model name, or 'all'")
    backends.add_argument("--variants", nargs="+", default=["small"], help="e.g. small paper vit_b")
    backends.add_argument("--repeats", type=int, default=10, help="timed calls at batch 1; a third of them at the largest")
    backends.add_argument("--warmup", type=int, default=2, help="untimed calls first (1 is enough for calls of seconds)")
    backends.add_argument("--max-batch", type=int, help="cap the largest batch (ViT-H at 4 frames needs over 24 GB)")
    backends.add_argument("--http", action="store_true", help="also one request per model on each back end")
    backends.set_defaults(run=_bench_backends)

    int8 = sub.add_parser("bench-int8", help="swtr_unet INT8 (static quantization) vs fp32 and bf16: speed and Dice")
    int8.add_argument("--calibration", type=int, default=32, help="phantom slices to calibrate on")
    int8.add_argument("--cases", type=int, default=20, help="held-out phantom slices scored")
    int8.add_argument("--repeats", type=int, default=15)
    int8.set_defaults(run=_bench_int8)

    bench_triton = sub.add_parser("bench-triton", help="the service on Triton vs embedded at concurrency 1, 4, 16")
    bench_triton.add_argument("--model", default="all", help="registered model name, or 'all'")
    bench_triton.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    bench_triton.add_argument("--requests", type=int, default=24, help="requests per concurrency level")
    bench_triton.set_defaults(run=_bench_triton)

    batching = sub.add_parser(
        "bench-batching", help="the worker's batching policy: BentoML's adaptive batcher vs GraphBatcher"
    )
    batching.add_argument("--compute-ms", type=float, default=60, help="simulated run: fixed cost")
    batching.add_argument("--row-ms", type=float, default=15, help="simulated run: cost per row")
    batching.add_argument("--burst", type=int, default=240, help="concurrent calls in the burst")
    batching.add_argument("--lone", type=int, default=24, help="lone calls before and after the burst")
    batching.add_argument("--service", action="store_true", help="also lone requests around a burst on bentoml serve")
    batching.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    batching.set_defaults(run=_bench_batching)

    spinning = sub.add_parser("bench-spinning", help="ONNX Runtime sessions whose idle threads spin vs block")
    spinning.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    spinning.add_argument("--rounds", type=int, default=5, help="alternating rounds of 10 requests per setting")
    spinning.set_defaults(run=_bench_spinning)

    from load import capacity

    capacity_parser = sub.add_parser("capacity", help="step users up until the SLO breaks: the largest load held",
                                     description=capacity.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    capacity.add_arguments(capacity_parser)
    capacity_parser.set_defaults(run=capacity.run)

    from load import soak

    soak_parser = sub.add_parser("soak", help="a fixed load for a long time; memory of every service process judged flat",
                                 description=soak.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    soak.add_arguments(soak_parser)
    soak_parser.set_defaults(run=soak.run)

    from load import faults

    faults_parser = sub.add_parser("faults", help="kill the inference worker or tritonserver under locust load",
                                   description=faults.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    faults.add_arguments(faults_parser)
    faults_parser.set_defaults(run=faults.run)

    from load import quality

    quality_parser = sub.add_parser("quality", help="phantom quality per model through HTTP; back ends side by side",
                                    description=quality.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    quality.add_arguments(quality_parser)
    quality_parser.set_defaults(run=quality.run)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

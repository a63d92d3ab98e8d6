"""``python -m clients {models,segment,volume,stow,stream} ...``: call a running medseg-serve from the shell."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clients.http_client import MedsegClient, MedsegHTTPError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients", description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the served models")
    segment = sub.add_parser("segment", help="segment a DICOM, PNG or JPEG file")
    segment.add_argument("file", type=Path)
    segment.add_argument("--model", required=True)
    segment.add_argument("--output", choices=["png", "json", "overlay", "seg"], default="png")
    segment.add_argument("-o", "--out", type=Path, help="where to write the PNG (png/overlay)")
    segment.add_argument("--reference", type=Path, help="frame-pair models: the reference frame")
    segment.add_argument("--threshold", type=float, help="sigmoid models: threshold (0-1)")
    segment.add_argument("--classes", help="class-prompted models: ids or names to prompt, comma-separated (default: all)")
    volume = sub.add_parser("volume", help="segment NIfTI volumes: NAME=FILE per channel, or file=FILE (4-D)")
    volume.add_argument("channels", nargs="+", help="e.g. t1=a.nii.gz t1ce=b.nii.gz t2=c.nii.gz flair=d.nii.gz")
    volume.add_argument("--model", required=True)
    volume.add_argument("--output", choices=["nifti", "json"], default="nifti")
    volume.add_argument("-o", "--out", type=Path, default=Path("labels.nii.gz"), help="where to write the label map")
    stow = sub.add_parser("stow", help="STOW-RS a folder of DICOM files, wait for the jobs and save the SEGs")
    stow.add_argument("folder", type=Path)
    stow.add_argument("-o", "--out", type=Path, default=Path("seg"), help="folder the SEG files are written to")
    stow.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the jobs")
    stow.add_argument("--no-wait", action="store_true", help="store only")
    stream = sub.add_parser("stream", help="stream a video over WS /v1/stream; write an overlay video or mask PNGs")
    stream.add_argument("video", type=Path)
    stream.add_argument("--model", required=True)
    stream.add_argument("--out", type=Path, help="an overlay video (.mp4 .mkv .avi .webm) or a folder for label-map PNGs")
    stream.add_argument("--no-pacing", action="store_true", help="send as fast as possible instead of at the video's fps")
    stream.add_argument("--format", choices=["jpeg", "png"], default="jpeg", help="how frames are sent")
    stream.add_argument("--output", choices=["png", "rle"], default="png", help="how masks come back")
    stream.add_argument("--reference", help="frame-pair models: first, previous or a refresh period N")
    stream.add_argument("--threshold", type=float, help="sigmoid models: threshold (0-1)")
    stream.add_argument("--classes", help="class-prompted models: ids or names, comma-separated")
    args = parser.parse_args(argv)
    if args.command == "volume" and any("=" not in item for item in args.channels):
        parser.error("volume channels are NAME=FILE, e.g. t1=case_t1.nii.gz (or file=case_4d.nii.gz)")

    with MedsegClient(args.url) as client:
        try:
            if args.command == "models":
                print(json.dumps(client.models(), indent=2))
                return 0
            if args.command == "stream":
                return stream_video(client, args)
            if args.command == "stow":
                return stow_folder(client, args.folder, args.out, args.timeout, not args.no_wait)
            if args.command == "volume":
                channels = dict(item.split("=", 1) for item in args.channels)
                result = client.segment_volume({k: Path(v) for k, v in channels.items()}, args.model, args.output)
            else:
                result = client.segment(
                    args.file, args.model, args.output, args.reference, args.threshold,
                    args.classes.split(",") if args.classes else None,
                )
        except MedsegHTTPError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    if isinstance(result, dict):
        print(json.dumps(result, indent=2))
    else:
        suffix = ".seg.dcm" if args.output == "seg" else f".{args.output}.png"
        out = args.out or args.file.with_suffix(suffix)  # volume: --out defaults to labels.nii.gz
        out.write_bytes(result)
        print(f"wrote {out}")
    return 0


def stream_video(client: MedsegClient, args: argparse.Namespace) -> int:
    """Decode ``args.video`` with PyAV, stream it (paced at its fps unless --no-pacing), write
    each answer as it arrives (frames dropped or refused are written plain in a video), and print
    latency p50 / p95 / max, achieved fps and frames dropped."""
    from collections import deque

    import anyio

    from clients.stream_client import FrameResult
    from clients.video import MaskWriter, encode_frame, open_video

    source = open_video(args.video)
    pending: deque[tuple[int, object]] = deque()  # frames sent and not yet written: (index, rgb)
    colours = {label["id"]: tuple(label["color"]) for model in client.models() if model["name"] == args.model
               for label in model["labels"]}
    writer = MaskWriter(args.out, fps=source.fps, colours=colours) if args.out else None

    def frames():  # noqa: ANN202 - a generator of encoded frames
        for index, rgb in enumerate(source):
            if writer is not None:
                pending.append((index, rgb))
            yield encode_frame(rgb, args.format)

    def flush(until: int) -> None:
        while writer is not None and pending and pending[0][0] < until:
            writer.write(pending[0][0], pending.popleft()[1], None)

    def written(result: FrameResult) -> None:
        flush(result.index)
        if writer is not None and pending and pending[0][0] == result.index:
            writer.write(result.index, pending.popleft()[1], result.labels)

    reference = int(args.reference) if args.reference and args.reference.isdigit() else args.reference
    report = anyio.run(lambda: client.stream(
        frames(), args.model, output=args.output, reference=reference, threshold=args.threshold,
        classes=args.classes, fps=None if args.no_pacing else source.fps, on_result=written,
    ))
    flush(report.sent)
    if writer is not None:
        writer.close()
    latency = report.latency_ms()
    errors = [r for r in report.results if r.error]
    print(f"{report.sent} frames sent at {'full speed' if args.no_pacing else f'{source.fps:.2f} fps'}; "
          f"answered {len(report.results) - len(errors)}, dropped {report.dropped}, errors {len(errors)}")
    if latency["count"]:
        print(f"latency ms: p50 {latency['p50']:.1f}  p95 {latency['p95']:.1f}  max {latency['max']:.1f}; "
              f"achieved {report.achieved_fps:.1f} fps")
    if writer is not None:
        print(f"wrote {args.out}")
    return 0


def stow_folder(client: MedsegClient, folder: Path, out: Path, timeout_s: float, wait: bool) -> int:
    """Send every file under ``folder`` (DICOM files; others are refused by the service and
    reported), then wait for each study's jobs and write their SEGs to ``out``."""
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    summary = client.stow(paths)
    print(f"stored {sum(len(v) for v in summary.stored.values())} instance(s) in {len(summary.stored)} study(ies); "
          f"refused {len(summary.failed)}")
    if not wait:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for study in summary.stored:
        for job in client.wait_for_jobs(study, timeout_s):
            print(f"job {job['id']}: {job['state']} ({job['model']}, {job['instance_count']} instance(s)) "
                  f"{job['reason'] or ''}".rstrip())
            failed += job["state"] in ("failed", "delivery_failed")
            for result in job["results"]:
                for data in client.retrieve(result["url"]):
                    path = out / f"{result['sop_instance_uid']}.dcm"
                    path.write_bytes(data)
                    print(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m clients {models,segment} ...``: call a running medseg-serve from the shell."""

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
    segment.add_argument("--output", choices=["png", "json", "overlay"], default="png")
    segment.add_argument("-o", "--out", type=Path, help="where to write the PNG (png/overlay)")
    args = parser.parse_args(argv)

    with MedsegClient(args.url) as client:
        try:
            if args.command == "models":
                print(json.dumps(client.models(), indent=2))
                return 0
            result = client.segment(args.file, args.model, args.output)
        except MedsegHTTPError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    if isinstance(result, dict):
        print(json.dumps(result, indent=2))
    else:
        out = args.out or args.file.with_suffix(f".{args.output}.png")
        out.write_bytes(result)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

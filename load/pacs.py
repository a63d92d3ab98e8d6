"""A real PACS wired to the service: Orthanc forwards stable CT/MR series to the service by
STOW-RS, the service sends each SEG back to Orthanc (``MEDSEG_PACS_URL``). Used by ``make pacs``,
the round-trip tests and the PACS benchmark.

    python -m load.pacs                 # service on :3000, Orthanc on :8042; Ctrl-C stops both
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from load.local_service import ROOT, LocalService, free_port, local_service
from load.orthanc import OrthancServer, orthanc_server


@contextmanager
def pacs_pair(
    workdir: Path,
    repository: Path = ROOT / "model_repository",
    *,
    env: dict[str, str] | None = None,
    stable_age_s: int = 2,
    service_port: int | None = None,
    orthanc_port: int | None = None,
) -> Iterator[tuple[LocalService, OrthancServer]]:
    """The service (embedded back end; its SEGs stored to Orthanc) and Orthanc (forwarding to it),
    both on loopback; stopped when the block exits. ``env`` adds service settings."""
    orthanc_port = orthanc_port or free_port()
    service_env = {"MEDSEG_PACS_URL": f"http://127.0.0.1:{orthanc_port}/dicom-web", **(env or {})}
    with local_service(repository, workdir / "service", env=service_env, port=service_port) as service:
        with orthanc_server(
            workdir / "orthanc", forward_url=f"{service.url}/dicom-web", stable_age_s=stable_age_s, port=orthanc_port
        ) as orthanc:
            yield service, orthanc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.pacs", description=__doc__)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--port", type=int, default=3000, help="the service's port")
    parser.add_argument("--orthanc-port", type=int, default=8042)
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "pacs", help="spool, job store, Orthanc storage, logs")
    parser.add_argument("--quiet", type=float, default=5.0, help="MEDSEG_SERIES_QUIET_S of the service")
    parser.add_argument("--stable-age", type=int, default=2, help="Orthanc's StableAge (s)")
    args = parser.parse_args(argv)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        with pacs_pair(
            args.workdir, args.repository.resolve(), env={"MEDSEG_SERIES_QUIET_S": str(args.quiet)},
            stable_age_s=args.stable_age, service_port=args.port, orthanc_port=args.orthanc_port,
        ) as (service, orthanc):
            print(f"service  {service.url}  (jobs: {service.url}/v1/jobs, log: {service.log_path})")
            print(f"Orthanc  {orthanc.url}/app/explorer.html  (upload DICOM there or POST {orthanc.url}/instances)")
            print("stable CT/MR series go to the service; each SEG comes back into its study. Ctrl-C stops both.",
                  flush=True)
            signal.pause()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

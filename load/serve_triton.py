"""``make serve-triton``: a real tritonserver on 127.0.0.1 with the model repository, then the
BentoML service in front of it (``MEDSEG_BACKEND=triton``). A tritonserver that dies is started
again on the same ports (``SupervisedTriton``), as a production supervisor would; the service
answers 503 with Retry-After meanwhile and recovers by itself. Ctrl-C or SIGTERM stops both; the
server runs in its own process group, so no stub process outlives it.

    python -m load.serve_triton --repository model_repository --port 3000 --triton-ports 8000 8001 8002
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from load.local_service import ROOT, SERVICE, stop_process_group
from load.triton_server import SupervisedTriton


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.serve_triton", description=__doc__)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--triton-ports", type=int, nargs=3, default=(8000, 8001, 8002), metavar=("HTTP", "GRPC", "METRICS"))
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "triton")
    args = parser.parse_args(argv)

    supervisor = SupervisedTriton(args.repository.resolve(), args.workdir, tuple(args.triton_ports))
    server = supervisor.server
    print(f"tritonserver starting (log: {server.log_path})", flush=True)
    service: subprocess.Popen | None = None

    def shutdown(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)  # also when started in the background (SIGINT inherited as ignored)
    try:
        supervisor.wait_ready()
        print(f"tritonserver ready: HTTP {server.http_url}, gRPC {server.grpc_url}", flush=True)
        env = {
            **os.environ,
            "MEDSEG_BACKEND": "triton",
            "TRITON_URLS": server.grpc_url,
            "MEDSEG_MODEL_REPOSITORY": str(args.repository.resolve()),
        }
        bentoml = Path(sys.executable).with_name("bentoml")
        service = subprocess.Popen(
            [str(bentoml), "serve", SERVICE, "--host", args.host, "--port", str(args.port)],
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        return service.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if service is not None:
            stop_process_group(service)
        supervisor.stop()


if __name__ == "__main__":
    sys.exit(main())

"""The service in front of a real Triton Inference Server (tritonserver 2.51 from the
nvidia-pytriton wheel, python backend running the same ONNX graphs with ONNX Runtime).

- Every model answers through Triton exactly as the embedded back end does: identical label
  maps and JSON; every graph's raw outputs agree within 1e-5.
- Triton's dynamic batcher merges concurrent requests (read from its statistics).
- Faults: Triton killed under load gives 503 with Retry-After (no 500, no hang) and the service
  recovers by itself once Triton is back; with two servers, losing one loses no request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import io
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from PIL import Image
from pydicom.data import get_testdata_file

from load.local_service import LocalService, local_service
from load.triton_server import TritonServer, start_triton, stop_triton, triton_server, wait_ready
from export.repository import write_triton_files
from export.sample_requests import requests_per_model
from export.registry import get_spec
from export.triton.config import graph_config, parse_config
from services.contract import discover_cards
from services.runtime.ort_backend import OrtBackend
from services.runtime.graph_batcher import GraphBatcher, row_limits
from services.runtime.triton_backend import TritonBackend

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    with triton_server(REPOSITORY, tmp_path_factory.mktemp("triton")) as server:
        yield server


@pytest.fixture(scope="module")
def triton_service(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    env = {"MEDSEG_BACKEND": "triton", "TRITON_URLS": triton.grpc_url}
    with local_service(REPOSITORY, tmp_path_factory.mktemp("bentoml-triton"), env=env) as running:
        yield running


@pytest.mark.parametrize("model", ["swtr_unet", "mast", "surgical_sam", "hnf_net"])
def test_every_model_answers_through_triton_as_embedded(service, triton_service, model: str) -> None:
    route, files, fields = requests_per_model()[model]
    answers = []
    for running in (service, triton_service):
        for output in ("json", "nifti" if model == "hnf_net" else "png"):
            response = httpx.post(
                running.url + route, files=files, data={"model": model, "output": output, **fields}, timeout=300
            )
            assert response.status_code == 200, response.text
            answers.append(response.json() if output == "json" else response.content)
    embedded_json, embedded_map, triton_json, triton_map = answers
    assert triton_json == embedded_json
    if model == "hnf_net":  # gzip headers carry a timestamp: compare the decoded label maps
        embedded_map, triton_map = (nib.Nifti1Image.from_bytes(gzip.decompress(m)).get_fdata() for m in answers[1::2])
        np.testing.assert_array_equal(embedded_map, triton_map)
    else:
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(embedded_map))), np.asarray(Image.open(io.BytesIO(triton_map))))


def random_feeds(inputs, rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
    feeds = {}
    for spec in inputs:
        if spec.dtype == "int64":  # class ids
            feeds[spec.name] = np.array([2, 5, 7], dtype=np.int64)
        else:
            shape = [rows if d == -1 else d for d in spec.shape]
            feeds[spec.name] = rng.random(shape, dtype=np.float32)
    return feeds


def test_every_graph_agrees_with_embedded_within_1e5(triton: TritonServer) -> None:
    embedded = OrtBackend(REPOSITORY)
    rng = np.random.default_rng(0)

    async def compare() -> None:
        backend = TritonBackend(REPOSITORY, [triton.grpc_url])
        cards = discover_cards(REPOSITORY)
        batcher = GraphBatcher(backend.infer, row_limits(cards))  # as in the inference worker
        try:
            for card in cards.values():
                for graph, (_, inputs) in card.graphs().items():
                    # one row more than Triton takes per call: the worker's batcher must split it
                    feeds = random_feeds(inputs, rng, card.batching.max_batch_size + 1)
                    want = await embedded.infer(graph, feeds)
                    got = await batcher.run(graph, feeds, batched=graph not in card.unbatched_graphs())
                    assert set(got) == set(want), graph
                    for name in want:
                        assert got[name].shape == want[name].shape
                        assert np.abs(got[name] - want[name]).max() <= 1e-5, f"{graph}/{name}"
        finally:
            await backend.close()

    asyncio.run(compare())


def test_dynamic_batcher_merges_concurrent_requests(triton: TritonServer) -> None:
    model = "swtr_unet"
    client = triton_grpc.InferenceServerClient(triton.grpc_url)

    def stats() -> tuple[int, int]:
        s = client.get_inference_statistics(model).model_stats[0]
        return s.inference_count, s.execution_count

    slice_ = np.random.default_rng(1).random((1, 1, 256, 256), dtype=np.float32)

    def one(_: int) -> None:
        tensor = triton_grpc.InferInput("image", list(slice_.shape), "FP32")
        tensor.set_data_from_numpy(slice_)
        triton_grpc.InferenceServerClient(triton.grpc_url).infer(model, [tensor])

    inferences_before, executions_before = stats()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(32)))
    inferences, executions = (a - b for a, b in zip(stats(), (inferences_before, executions_before)))
    assert inferences == 32
    assert executions < inferences, f"{executions} executions for {inferences} inferences: nothing was batched"


def post_ct(url: str, timeout: float = 60) -> httpx.Response:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    return httpx.post(
        url + "/v1/segment", files={"file": ("ct.dcm", data, "application/dicom")}, data={"model": "swtr_unet"},
        timeout=timeout,
    )


def statuses_under_load(url: str, count: int, action) -> list[httpx.Response]:
    """``count`` concurrent requests; ``action()`` runs once they are in flight."""
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(post_ct, url) for _ in range(count)]
        time.sleep(0.3)
        action()
        return [f.result() for f in futures]


def test_triton_killed_under_load_gives_503_then_recovers(tmp_path: Path) -> None:
    server = start_triton(REPOSITORY, tmp_path / "triton")
    ports = tuple(int(u.rsplit(":", 1)[1]) for u in (server.http_url, server.grpc_url, server.metrics_url))
    try:
        wait_ready(server)
        env = {"MEDSEG_BACKEND": "triton", "TRITON_URLS": server.grpc_url, "MEDSEG_TRITON_TIMEOUT_S": "20"}
        with local_service(REPOSITORY, tmp_path / "bentoml", env=env) as service:
            assert post_ct(service.url).status_code == 200
            started = time.monotonic()
            responses = statuses_under_load(service.url, 12, lambda: stop_triton(server, kill=True))
            assert time.monotonic() - started < 60, "requests hung after Triton died"
            assert {r.status_code for r in responses} <= {200, 503}, [r.text[:200] for r in responses]
            failed = [r for r in responses if r.status_code == 503]
            assert all(r.headers.get("retry-after") and r.json()["error"] == "backend_unavailable" for r in failed)
            after = post_ct(service.url)
            assert after.status_code == 503 and after.headers["retry-after"]
            deadline = time.monotonic() + 30
            while httpx.get(service.url + "/readyz").status_code == 200 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert httpx.get(service.url + "/readyz").status_code == 503, "still ready with no Triton"

            server = start_triton(REPOSITORY, tmp_path / "triton", ports)  # same ports: the service finds it again
            wait_ready(server)
            deadline = time.monotonic() + 60
            while (status := post_ct(service.url).status_code) != 200 and time.monotonic() < deadline:
                time.sleep(1)
            assert status == 200, "the service did not recover after Triton came back"
            assert httpx.get(service.url + "/readyz").status_code == 200
    finally:
        stop_triton(server)


def test_with_two_servers_losing_one_loses_no_request(tmp_path: Path) -> None:
    first, second = start_triton(REPOSITORY, tmp_path / "a"), start_triton(REPOSITORY, tmp_path / "b")
    try:
        wait_ready(first)
        wait_ready(second)
        env = {"MEDSEG_BACKEND": "triton", "TRITON_URLS": f"{first.grpc_url},{second.grpc_url}"}
        with local_service(REPOSITORY, tmp_path / "bentoml", env=env) as service:
            warm = [post_ct(service.url) for _ in range(4)]
            assert all(r.status_code == 200 for r in warm)
            responses = statuses_under_load(service.url, 12, lambda: stop_triton(first, kill=True))
            assert [r.status_code for r in responses] == [200] * 12, [r.text[:200] for r in responses if r.status_code != 200]
            assert all(post_ct(service.url).status_code == 200 for _ in range(4))
            client = triton_grpc.InferenceServerClient(second.grpc_url)
            assert client.get_inference_statistics("swtr_unet").model_stats[0].inference_count > 0
    finally:
        stop_triton(first)
        stop_triton(second)


def test_triton_accepts_the_class_id_warmup_of_gpu_configs(tmp_path: Path) -> None:
    """The ``gpu`` target's warm-up of the prompt stage reads class ids from ``warmup/class_ids``;
    Triton checks that file's size at load (it refuses to load the model otherwise). Grafted onto
    the python-backend config, since this machine has no GPU."""
    spec = get_spec("surgical_sam")
    prompt = next(graph for graph in spec.graphs("small") if not graph.batched)
    name = spec.graph_model(prompt.role)
    repository = tmp_path / "repository"
    shutil.copytree(REPOSITORY / name, repository / name)
    config = parse_config((repository / name / "config.pbtxt").read_text())
    config.model_warmup.extend(graph_config(name, prompt.inputs, prompt.outputs, spec.batching, "1", False, "gpu").model_warmup)
    write_triton_files(repository / name, config, "cpu")
    with triton_server(repository, tmp_path / "work") as server:
        client = triton_grpc.InferenceServerClient(server.grpc_url)
        assert client.is_model_ready(name)


def test_the_python_backend_runs_openvino_when_the_config_says_so(tmp_path: Path) -> None:
    """``runtime: openvino`` in a cpu config: the same graphs compiled by OpenVINO inside
    tritonserver (bf16 where this CPU has it), every graph's outputs close to ONNX Runtime's,
    SurgicalSAM's prompt decoder with several classes included."""
    repository = tmp_path / "repository"
    shutil.copytree(REPOSITORY, repository, ignore=shutil.ignore_patterns(".built"))
    for path in repository.glob("*/config.pbtxt"):
        config = parse_config(path.read_text())
        if config.backend == "python":
            config.parameters["runtime"].string_value = "openvino"
            write_triton_files(path.parent, config, "cpu")  # this checkout's model.py too
    embedded = OrtBackend(REPOSITORY)
    rng = np.random.default_rng(1)
    largest = []
    with triton_server(repository, tmp_path / "work") as server:
        log = server.log_text()

        async def compare() -> None:
            backend = TritonBackend(repository, [server.grpc_url])
            cards = discover_cards(repository)
            try:
                for card in cards.values():
                    for graph, (_, inputs) in card.graphs().items():
                        feeds = random_feeds(inputs, rng, 2)
                        want, got = await embedded.infer(graph, feeds), await backend.infer(graph, feeds)
                        for name in want:
                            assert got[name].shape == want[name].shape, f"{graph}/{name}"
                            scale = max(float(np.ptp(want[name])), float(np.abs(want[name]).max()))
                            assert np.abs(got[name] - want[name]).max() <= 0.08 * scale, f"{graph}/{name}"
                            largest.append(float(np.abs(got[name] - want[name]).max()) / scale)
            finally:
                await backend.close()

        asyncio.run(compare())
    assert "runtime must be" not in log
    import openvino

    if "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert max(largest) > 1e-4, "outputs equal to ONNX Runtime's: was OpenVINO (bf16) used at all?"

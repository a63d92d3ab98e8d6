"""Triton python-backend model that serves one ONNX graph with ONNX Runtime (``--target cpu``).

Copied as ``<model>/<version>/model.py`` next to ``model.onnx``. Triton's ``onnxruntime_onnx``
backend is not in the tritonserver build that runs here (the one in the nvidia-pytriton wheel),
so CPU deployments run the same graph through this file:

- ``initialize`` opens the ONNX Runtime session once and checks that the config's tensors (names,
  types, shapes) are the graph's; a mismatch fails the model load with a message naming the tensor.
- ``execute`` receives what the dynamic batcher gathered: batched models run all valid requests
  as one concatenated batch and split the outputs back; a request with non-finite values gets its
  own INVALID_ARG error, and if the merged run fails each request is retried alone, so one bad
  request never fails the others. Unbatched models (``max_batch_size: 0``) run request by request.

Parameters (config ``parameters``): ``graph`` (file name, default ``model.onnx``),
``intra_op_threads`` (threads, 0 = the runtime's default), ``runtime`` (``onnxruntime``, the
default, or ``openvino``: the same graph compiled by OpenVINO's CPU plugin, as the service's
``MEDSEG_BACKEND=openvino`` does) and ``openvino_precision`` (``auto``: bf16 where the CPU has it,
``bf16`` or ``f32``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

_ORT_TYPES = {
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(int64)": "TYPE_INT64",
    "tensor(uint8)": "TYPE_UINT8",
}


def _parameter(config: dict[str, Any], key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def config_mismatches(config: dict[str, Any], session: ort.InferenceSession) -> list[str]:
    """Differences between the config's tensors and the graph's (empty when they agree).

    A batched config's dims exclude the batch axis; symbolic graph dims match any config dim.
    """
    batched = int(config.get("max_batch_size", 0)) > 0
    problems = []
    for kind, configured, actual in (
        ("input", config.get("input", []), session.get_inputs()),
        ("output", config.get("output", []), session.get_outputs()),
    ):
        graph = {t.name: t for t in actual}
        if sorted(graph) != sorted(t["name"] for t in configured):
            problems.append(f"{kind}s: config {[t['name'] for t in configured]}, graph {sorted(graph)}")
            continue
        for tensor in configured:
            node = graph[tensor["name"]]
            if _ORT_TYPES.get(node.type) != tensor["data_type"]:
                problems.append(f"{kind} {tensor['name']}: config {tensor['data_type']}, graph {node.type}")
            shape = list(node.shape[1:] if batched else node.shape)
            dims = [int(d) for d in tensor["dims"]]
            if len(shape) != len(dims) or any(isinstance(s, int) and s != d for s, d in zip(shape, dims)):
                problems.append(f"{kind} {tensor['name']}: config dims {dims}, graph shape {list(node.shape)}")
    return problems


_OV_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "i64": "tensor(int64)", "u8": "tensor(uint8)"}


class _Port:
    """An OpenVINO model input or output, described as ONNX Runtime describes its tensors."""

    def __init__(self, port: Any) -> None:
        self.name = port.get_any_name()
        self.type = _OV_TYPES.get(port.get_element_type().get_type_name(), str(port.get_element_type()))
        self.shape = [d.get_length() if d.is_static else "?" for d in port.get_partial_shape()]


class OpenVinoSession:
    """The graph compiled by OpenVINO's CPU plugin, behind the part of ONNX Runtime's session API
    this file uses (``get_inputs``, ``get_outputs``, ``run``).

    A static leading dimension of 1 is declared dynamic where another input is dynamic: OpenVINO
    2026.4 fails SurgicalSAM's prompt decoder for more than one class otherwise (the service's
    ``services.runtime.ov_backend.relax_static_leading_dims`` does the same; this file cannot
    import the service)."""

    def __init__(self, graph: Path, precision: str, threads: int) -> None:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(graph))
        shapes = {p.get_any_name(): p.get_partial_shape() for p in model.inputs}
        if any(shape.is_dynamic for shape in shapes.values()):
            relaxed = {name: ov.PartialShape([ov.Dimension(), *list(shape)[1:]]) for name, shape in shapes.items()
                       if shape.rank.is_static and shape.rank.get_length() and shape[0].is_static and shape[0].get_length() == 1}
            if relaxed:
                model.reshape(relaxed)
        if precision == "auto":
            precision = "bf16" if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "f32"
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        self.compiled = core.compile_model(model, "CPU", config)
        self._inputs = [_Port(p) for p in self.compiled.inputs]
        self._outputs = [_Port(p) for p in self.compiled.outputs]

    def get_inputs(self) -> list[_Port]:
        return self._inputs

    def get_outputs(self) -> list[_Port]:
        return self._outputs

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = self.compiled.create_infer_request().infer(feeds)
        by_name = {port.get_any_name(): np.asarray(value) for port, value in results.items()}
        return [by_name[name] for name in output_names]


def open_runtime(config: dict[str, Any], graph: Path) -> Any:
    """The graph's session on the ``runtime`` the config names (ONNX Runtime by default)."""
    threads = int(_parameter(config, "intra_op_threads", "0"))
    runtime = _parameter(config, "runtime", "onnxruntime")
    if runtime == "openvino":
        return OpenVinoSession(graph, _parameter(config, "openvino_precision", "auto"), threads)
    if runtime != "onnxruntime":
        raise pb_utils.TritonModelException(f"{config['name']}: runtime must be onnxruntime or openvino, not {runtime!r}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    # Idle threads block instead of spinning: each graph is its own stub process on the same cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


class TritonPythonModel:
    """One ONNX Runtime session (or OpenVINO compiled model) per model instance."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        self.session = open_runtime(config, folder / _parameter(config, "graph", "model.onnx"))
        problems = config_mismatches(config, self.session)
        if problems:
            raise pb_utils.TritonModelException(f"{config['name']}: config and graph disagree: " + "; ".join(problems))
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.input_names = [t["name"] for t in config["input"]]
        self.output_names = [t["name"] for t in config["output"]]

    def _inputs(self, request: Any) -> dict[str, np.ndarray]:
        return {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names}

    def _response(self, outputs: list[np.ndarray]) -> Any:
        tensors = [pb_utils.Tensor(name, np.ascontiguousarray(a)) for name, a in zip(self.output_names, outputs)]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    @staticmethod
    def _error(message: str, code: Any) -> Any:
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))

    def _run_one(self, feeds: dict[str, np.ndarray]) -> Any:
        try:
            return self._response(self.session.run(self.output_names, feeds))
        except Exception as error:  # noqa: BLE001 - reported to that request only
            return self._error(f"inference failed: {type(error).__name__}: {str(error)[:200]}", pb_utils.TritonError.INTERNAL)

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        valid: list[tuple[int, dict[str, np.ndarray]]] = []
        for index, request in enumerate(requests):
            feeds = self._inputs(request)
            bad = [n for n, a in feeds.items() if a.dtype.kind == "f" and not np.isfinite(a).all()]
            if bad:
                responses[index] = self._error(f"input {bad[0]} has NaN or infinite values", pb_utils.TritonError.INVALID_ARG)
            else:
                valid.append((index, feeds))
        if not self.batched or len(valid) == 1:
            for index, feeds in valid:
                responses[index] = self._run_one(feeds)
            return responses
        if valid:
            merged = {n: np.concatenate([feeds[n] for _, feeds in valid]) for n in self.input_names}
            try:
                outputs = self.session.run(self.output_names, merged)
            except Exception:  # noqa: BLE001 - find the request at fault: run each alone
                for index, feeds in valid:
                    responses[index] = self._run_one(feeds)
                return responses
            start = 0
            for index, feeds in valid:
                rows = len(feeds[self.input_names[0]])
                responses[index] = self._response([o[start : start + rows] for o in outputs])
                start += rows
        return responses

    def finalize(self) -> None:
        self.session = None

"""TritonBackend: the graphs run on one or more Triton Inference Servers, called over gRPC.

One asyncio gRPC channel per server, reused by every call (``tritonclient.grpc.aio``), with short
reconnect back-off so a restarted server is found again within about a second. Each call has a
timeout (``MEDSEG_TRITON_TIMEOUT_S``); a server that answers UNAVAILABLE, resets the connection or
times out is taken out of the pool and the call moves to the next server after a short back-off.
A monitor probes every server each ``probe_interval_s`` and puts it back once it is ready with
every model loaded. When no server can take the call, :class:`TritonUnavailable` is raised (the
API answers 503 with Retry-After).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from services.contract import ModelCard, discover_cards
from services.errors import BackendUnavailable, ModelNotFound
from services.runtime.server_pool import ServerPool

log = logging.getLogger("medseg.runtime")

# gRPC status names after which another server (or a later try) may succeed.
RETRYABLE = frozenset({"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED"})
CHANNEL_ARGS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_send_message_length", 512 * 1024 * 1024),
    ("grpc.max_receive_message_length", 512 * 1024 * 1024),
]


class TritonUnavailable(BackendUnavailable):
    """No Triton server could run the call (all down, unreachable or timing out)."""


class TritonBackend:
    """Runs graphs by Triton model name on the servers of ``urls`` (``host:grpc_port``)."""

    def __init__(
        self,
        repository: Path,
        urls: list[str],
        timeout_s: float = 60.0,
        attempts: int = 3,
        backoff_s: float = 0.2,
        probe_interval_s: float = 1.0,
    ) -> None:
        self.cards: dict[str, ModelCard] = discover_cards(repository)
        self.models = sorted({graph for card in self.cards.values() for graph in card.graphs()})
        self.outputs = {
            name: [t.name for t in outputs]
            for card in self.cards.values()
            for name, outputs in _graph_outputs(card).items()
        }
        self.pool = ServerPool(urls)
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.probe_interval_s = probe_interval_s
        self._clients: dict[str, tuple[asyncio.AbstractEventLoop, triton_aio.InferenceServerClient]] = {}
        self._monitor: asyncio.Task | None = None

    # ------------------------------------------------------------------ health

    def _client(self, url: str) -> triton_aio.InferenceServerClient:
        """The server's channel on the running event loop (an asyncio channel is bound to its loop)."""
        loop = asyncio.get_running_loop()
        known = self._clients.get(url)
        if known is None or known[0] is not loop:
            self._clients[url] = (loop, triton_aio.InferenceServerClient(url, channel_args=CHANNEL_ARGS))
        return self._clients[url][1]

    async def probe(self, url: str) -> bool:
        """Ready server with every model loaded → mark up; anything else → mark down."""
        client = self._client(url)
        try:
            ready = await client.is_server_ready(client_timeout=2.0) and all(
                await asyncio.gather(*(client.is_model_ready(m, client_timeout=2.0) for m in self.models))
            )
        except (InferenceServerException, OSError):
            ready = False
        (self.pool.mark_up if ready else self.pool.mark_down)(url)
        return ready

    async def start(self) -> None:
        """Probe every server once and keep probing in the background, on the running event loop
        (idempotent; a monitor left on another loop, e.g. a start-up hook's, is replaced)."""
        loop = asyncio.get_running_loop()
        if self._monitor is None or self._monitor.done() or self._monitor.get_loop() is not loop:
            self._monitor = loop.create_task(self._watch())
            await asyncio.gather(*(self.probe(url) for url in self.pool.urls))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval_s)
            await asyncio.gather(*(self.probe(url) for url in self.pool.urls), return_exceptions=True)

    def is_ready(self) -> bool:
        """True while at least one server has every model loaded (the last probe said so)."""
        return bool(self.cards) and bool(self.pool.healthy())

    # --------------------------------------------------------------- inference

    async def infer(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one graph (batched inputs, axis 0; at most the graph's max_batch_size rows, which
        the worker's GraphBatcher guarantees) on the next healthy server."""
        if model not in self.outputs:
            raise ModelNotFound(f"model {model!r} is not served")
        await self.start()
        return await self._infer_with_failover(model, inputs)

    async def _infer_with_failover(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One call on the next healthy server; fail over on transport errors and timeouts."""
        last = "no server is ready"
        tried = 0
        for attempt in range(self.attempts):
            for url in self.pool.order():
                tried += 1
                try:
                    outputs = await self._infer_on(url, model, inputs)
                    self.pool.mark_up(url)  # it answered: back in rotation before its next probe
                    return outputs
                except InferenceServerException as error:
                    if str(error.status()) not in RETRYABLE:
                        raise
                    last = f"{error.status()}: {(error.message() or '')[:160]}"
                except (OSError, asyncio.TimeoutError) as error:
                    last = type(error).__name__
                self.pool.mark_down(url)
                log.warning("triton %s failed for %s (%s); server taken out", url, model, last)
            await asyncio.sleep(self.backoff_s * 2**attempt)
        raise TritonUnavailable(f"no Triton server could run {model} after {tried} tries; last error {last}")

    async def _infer_on(self, url: str, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        requests = []
        for name, array in inputs.items():
            tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
            requests.append(tensor)
        outputs = [InferRequestedOutput(name) for name in self.outputs[model]]
        result = await self._client(url).infer(model, requests, outputs=outputs, client_timeout=self.timeout_s)
        return {name: result.as_numpy(name) for name in self.outputs[model]}

    async def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
        await asyncio.gather(*(client.close() for _, client in self._clients.values()), return_exceptions=True)


def _graph_outputs(card: ModelCard) -> dict[str, tuple]:
    """Output tensors of every graph of a card, by Triton model name."""
    if card.components:
        return {c.model: c.outputs for c in card.components}
    return {card.name: card.outputs}

"""Inference backends: torch and onnxruntime, one contract.

A backend splits the network where the noise enters (README.md, "The method in one screen"):

- ``backbone(images [B,C,H,W]) -> state [B, ...]``: the deterministic part, run once
  per batch; row ``i`` of the state belongs to image ``i``;
- ``head(state [B, ...], noise [T,D]) -> logits [T,B,K]``: the cheap part, run once
  per request with that request's own draws;
- ``logits(images, noise) = head(backbone(images), noise)``.

So T draws never cost T backbone passes, and the batcher can slice one batch's state
by request. The state is the noise-free logits ``W mu + b`` [B,K] and the head adds
each draw's shift ``W delta(noise)`` [T,K] (for onnxruntime, ``model.onnx`` is split
at load time into an image-only and a noise-only graph whose outputs are added).
An input's logits therefore depend only on its own backbone row and the noise.

Which backend predicts is a setting (``MFDV_BACKEND``); ``auto`` takes the one measured fastest
for the device (``choose_backend``). Every backend computes with an explicit number of intra-op
threads (``MFDV_PREDICT_THREADS``), never the library's default of one per core: the compute
thread shares the cores with the event loop, the decode threads and the attack workers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

import models
from models import Checkpoint
from models.checkpoint import ONNX

logger = logging.getLogger(__name__)


class BackendError(RuntimeError):
    """A backend cannot serve this checkpoint on this machine (message says why and what to do)."""


class Backend(Protocol):
    """What the engine needs from a backend."""

    name: str
    device: str
    threads: int

    def init_thread(self) -> None:
        """Prepare the calling thread to compute (torch's intra-op threads); called once per compute thread."""
        ...

    def backbone(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image state [B, ...] for pixels [B,C,H,W] in [0, 1] (CPU float32)."""
        ...

    def head(self, state: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Logits [T,B,K] (CPU float32) for state rows [B, ...] and standard normal ``noise`` [T,D]."""
        ...

    def logits(self, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``head(backbone(images), noise)``: logits [T,B,K]."""
        ...


def resolve_device(name: str) -> str:
    """``models.resolve_device`` for the service: the device's name, or a ``BackendError`` saying what to use.

    Raises:
        BackendError: ``cuda`` asked for without a GPU, or an unknown name.
    """
    try:
        return models.resolve_device(name).type
    except ValueError as e:
        raise BackendError(f"MFDV_DEVICE={name}: {e}") from None


def set_torch_threads(threads: int) -> None:
    """torch's intra-op threads for the calling thread (OpenMP's setting is per thread): the compute
    thread's noise draws, summaries and, with the torch backend, the model."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


class TorchBackend:
    """The checkpoint's torch model, split where the noise enters.

    ``backbone`` returns the noise-free logits ``W mu + b`` [B,K] (``head.base_logits``) and
    ``head`` adds each draw's shift ``W delta(noise)`` [T,K] (``head.noise_shift``): the same
    sum the head's ``forward`` computes, but the shift depends on the noise alone, so an
    input's logits do not depend on how many other inputs share its request or batch.
    """

    name = "torch"

    def __init__(self, checkpoint: Checkpoint, device: str, threads: int = 1) -> None:
        self.device = device
        self.threads = threads
        self.model = checkpoint.model.to(device).eval()
        if device == "cuda":
            # Same shapes, same kernels: no autotuning, no nondeterministic cuDNN algorithms.
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True

    def init_thread(self) -> None:
        set_torch_threads(self.threads)

    @torch.inference_mode()
    def backbone(self, images: torch.Tensor) -> torch.Tensor:
        mu = self.model.features(images.to(self.device, non_blocking=True))  # (B, D)
        return self.model.head.base_logits(mu)  # (B, K)

    @torch.inference_mode()
    def head(self, state: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        shift = self.model.head.noise_shift(noise.to(state.device))  # (T, K)
        return (state.unsqueeze(0) + shift.unsqueeze(1)).float().cpu()  # (T, B, K)

    def logits(self, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images), noise)


def _ancestors(graph: object, tensor: str, producers: dict[str, object]) -> set[str]:
    """Graph inputs that ``tensor`` depends on."""
    inputs = {i.name for i in graph.input}  # type: ignore[attr-defined]
    seen: set[str] = set()
    found: set[str] = set()
    stack = [tensor]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in inputs:
            found.add(name)
        node = producers.get(name)
        if node is not None:
            stack.extend(n for n in node.input if n)  # type: ignore[attr-defined]
    return found


def _subgraph(model: object, input_name: str, output_name: str, producers: dict[str, object]) -> object:
    """A model computing ``output_name`` from graph input ``input_name`` (only the nodes it needs)."""
    from onnx import TensorProto, helper

    graph = model.graph  # type: ignore[attr-defined]
    needed: list[object] = []
    seen: set[str] = set()
    stack = [output_name]
    while stack:
        name = stack.pop()
        node = producers.get(name)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        needed.append(node)
        stack.extend(n for n in node.input if n)  # type: ignore[attr-defined]
    order = {id(n): i for i, n in enumerate(graph.node)}
    nodes = sorted(needed, key=lambda n: order[id(n)])
    used = {n for node in nodes for n in node.input}  # type: ignore[attr-defined]
    inits = [t for t in graph.initializer if t.name in used]
    sub = helper.make_graph(
        nodes,
        f"{graph.name}_{output_name}",
        [i for i in graph.input if i.name == input_name],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, None)],
        initializer=inits,
    )
    return helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)  # type: ignore[attr-defined]


def split_onnx(path: Path) -> tuple[bytes, bytes]:
    """Split ``model.onnx`` into ``image -> base [1,B,K]`` and ``noise -> shift [T,1,K]`` graphs.

    The exported graph ends in ``logits = Add(base(image), shift(noise))`` (the head is
    linear in the noise); this finds that ``Add`` and extracts both branches.

    Raises:
        BackendError: the graph is not of that form (serve it with the torch backend).
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    final = producers.get("logits")
    if final is None or final.op_type != "Add" or len(final.input) != 2:
        raise BackendError(
            f"{path}: expected `logits = Add(base, shift)`; serve this checkpoint with MFDV_BACKEND=torch"
        )
    deps = {name: _ancestors(graph, name, producers) for name in final.input}
    base = [n for n, d in deps.items() if d == {"image"}]
    shift = [n for n, d in deps.items() if d == {"noise"}]
    if len(base) != 1 or len(shift) != 1:
        raise BackendError(
            f"{path}: the final Add does not separate image and noise ({deps}); serve it with MFDV_BACKEND=torch"
        )
    base_model = _subgraph(model, "image", base[0], producers)
    shift_model = _subgraph(model, "noise", shift[0], producers)
    return base_model.SerializeToString(), shift_model.SerializeToString()


class OnnxBackend:
    """onnxruntime on the checkpoint's ``model.onnx``, split into image and noise graphs.

    ``backbone`` returns the noise-free logits [B,K]; ``head`` adds each draw's logit
    shift ``W delta(noise)`` [T,K]. The sum is exactly the full graph's ``Add``.

    Each session computes with ``threads`` intra-op threads that sleep when idle (no spinning:
    a spinning pool takes the CPU the event loop needs) and runs its nodes in order.
    """

    name = "onnx"

    def __init__(self, checkpoint: Checkpoint, device: str, threads: int = 1) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        if device == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise BackendError(
                    "MFDV_DEVICE=cuda with MFDV_BACKEND=onnx needs onnxruntime-gpu (CUDAExecutionProvider); "
                    f"this onnxruntime has {available}"
                )
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self.device = device
        self.threads = threads
        base, shift = split_onnx(checkpoint.path / ONNX)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._base = ort.InferenceSession(base, sess_options=opts, providers=providers)
        self._shift = ort.InferenceSession(shift, sess_options=opts, providers=providers)
        self._base_out = self._base.get_outputs()[0].name
        self._shift_out = self._shift.get_outputs()[0].name
        logger.info("onnxruntime providers: %s, %d intra-op threads", self._base.get_providers(), threads)

    def init_thread(self) -> None:
        """The sessions own their threads; torch's (the noise and the summary) are set like them."""
        set_torch_threads(self.threads)

    def backbone(self, images: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        base = self._base.run([self._base_out], {"image": x})[0]  # (1, B, K)
        return torch.from_numpy(base).squeeze(0)  # (B, K)

    def head(self, state: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        n = np.ascontiguousarray(noise.detach().cpu().numpy(), dtype=np.float32)
        shift = torch.from_numpy(self._shift.run([self._shift_out], {"noise": n})[0])  # (T, 1, K)
        return state.unsqueeze(0) + shift  # (T, B, K)

    def logits(self, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images), noise)


AUTO_BACKENDS = {"cpu": "onnx", "cuda": "torch"}
"""What ``MFDV_BACKEND=auto`` predicts with, per device: the backend with the most images/s in the
compute-ceiling table of ``benchmarks/bench_service.py`` (rerun it to revisit; docs/service.md)."""


def choose_backend(name: str, device: str) -> str:
    """The backend ``name`` names on ``device``: itself, or for ``auto`` the measured choice (``AUTO_BACKENDS``)."""
    return AUTO_BACKENDS.get(device, "torch") if name == "auto" else name


def create_backend(name: str, checkpoint: Checkpoint, device: str, threads: int = 1) -> Backend:
    """Build the backend ``name`` (``auto``, ``torch`` or ``onnx``) on a resolved ``device`` with ``threads``
    intra-op threads.

    ``auto`` falls back to torch, with a warning, when its choice cannot serve this checkpoint
    here (no onnxruntime, a graph that does not split); a backend named explicitly does not.

    Raises:
        BackendError: unknown name, or the named backend cannot run here.
    """
    chosen = choose_backend(name, device)
    if chosen == "torch":
        return TorchBackend(checkpoint, device, threads)
    if chosen == "onnx":
        try:
            return OnnxBackend(checkpoint, device, threads)
        except (BackendError, ImportError) as e:
            if name != "auto":
                raise
            logger.warning("MFDV_BACKEND=auto: onnxruntime cannot serve this checkpoint (%s); using torch", e)
            return TorchBackend(checkpoint, device, threads)
    raise BackendError(f"unknown backend {name!r}; use auto, torch or onnx")

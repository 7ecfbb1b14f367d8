"""The model repository: the models one process serves, loaded, reloaded and unloaded while it serves.

A repository is a directory; each folder in it is a model: a checkpoint (``manifest.json``,
``weights.safetensors``, ``model.onnx``: version ``1``), or numbered version folders that are
checkpoints (``1/``, ``2/``, ...; the highest is served unless a load names another). A model
is called by its manifest's ``name`` (the folder's name when the manifest has none).
``--model-dir`` is a repository of that one folder.

Every loaded model version is a ``Serving``: its engine (checkpoint, backend, batching queue),
the torch model attack probes differentiate, its input checks, and the process's decode and
attack pools, which all models share, as they share one compute thread (``MicroBatcher``'s
``executor``): a batch of one model and a batch of another take turns on the same cores
instead of competing for them.

Live changes. ``load`` reads the folder again, verifies the new version (sha256, manifest) and
warms it up off the event loop while the old version keeps serving; only then do new requests
go to it. A request holds the version it started with (``Serving.use``) until it is answered;
a replaced or unloaded version stops once its last request is done (or after
``RETIRE_SECONDS``). A failed load leaves what was serving as it was, and says why.

With several worker processes each worker has its own repository; ``RepositoryControl`` keeps
them in step (what should be loaded is written to a shared file, every worker follows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

from models import CheckpointError, StochasticClassifier, read_manifest

from ..config import Settings
from ..errors import Conflict, LoadFailed, ModelNotReady, NotFound
from ..metrics import Metrics, ModelMetrics
from .backends import set_torch_threads
from .engine import InferenceEngine
from .inputs import InputSpec
from .pool import BoundedPool

logger = logging.getLogger(__name__)

State = Literal["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]
"""A model's state in the index, in Triton's words."""


# -- what the repository holds --------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    """One model's folder in the repository.

    Attributes:
        folder: the model's folder.
        name: the name clients use: the newest version's manifest ``name`` (else the folder's name).
        versions: version -> checkpoint directory, oldest first (``"1"`` for a folder that is a checkpoint).
    """

    folder: Path
    name: str
    versions: dict[str, Path]

    @property
    def latest(self) -> str:
        return next(reversed(self.versions))


def read_source(folder: Path) -> ModelSource:
    """The model in ``folder``: a checkpoint, or numbered version folders that are.

    Raises:
        CheckpointError: neither (the message says what a model folder holds).
    """
    if not folder.is_dir():
        raise CheckpointError(f"{folder} does not exist (or is not a directory)")
    if (folder / "manifest.json").is_file():
        versions = {"1": folder}
    else:
        numbered = sorted(
            (int(p.name), p)
            for p in folder.iterdir()
            if p.is_dir() and p.name.isdigit() and (p / "manifest.json").is_file()
        )
        if not numbered:
            raise CheckpointError(
                f"{folder} is not a model: it has no manifest.json and no numbered version folder (1/, 2/, ...) "
                "holding one"
            )
        versions = {str(n): p for n, p in numbered}
    newest = versions[next(reversed(versions))]
    try:
        name = str(read_manifest(newest, verify=False)[0].get("name") or folder.name)
    except CheckpointError:
        name = folder.name  # the load says what is wrong with it
    return ModelSource(folder, name, versions)


def scan(folders: list[Path]) -> tuple[dict[str, ModelSource], list[str]]:
    """The models in ``folders`` by name, and why the other folders are not models (or are left out)."""
    sources: dict[str, ModelSource] = {}
    skipped: list[str] = []
    for folder in folders:
        try:
            source = read_source(folder)
        except CheckpointError as e:
            skipped.append(str(e))
            continue
        if source.name in sources:
            skipped.append(
                f"{folder} is left out: its model is named {source.name!r}, as {sources[source.name].folder}'s is"
            )
            continue
        sources[source.name] = source
    return sources, skipped


@dataclass(eq=False)
class Serving:
    """One loaded model version and what its requests serve with, complete (built by ``Repository.load``
    once the version is verified and warmed up). Routes reach it through ``AppState.serve`` (or
    ``ServingDep``), holding it with ``use`` while their request is answered.

    Attributes:
        name: the model's name.
        version: the version served.
        engine: the loaded model and its batcher.
        decode_pool: the process's threads for the requests' CPU work (parsing, decoding, rendering
            responses), shared by every model.
        attack_pool: the process's bounded threads for attack probes, shared by every model.
        probe_model: the torch model attack probes differentiate (a frozen copy of the checkpoint's,
            whatever the backend).
        input_spec: what an input must be for this model and these settings (``service.compute.inputs``).
        metrics: this version's labelled series (``Metrics.model``).
        loaded_at: when it began to take traffic (``time.time()``).
    """

    name: str
    version: str
    engine: InferenceEngine
    decode_pool: BoundedPool
    attack_pool: BoundedPool
    probe_model: StochasticClassifier
    input_spec: InputSpec
    metrics: ModelMetrics
    loaded_at: float = field(default_factory=time.time)
    users: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @contextlib.contextmanager
    def use(self) -> Iterator[Serving]:
        """Hold this version while a request is answered: it is not stopped before the request ends."""
        self.users += 1
        self._idle.clear()
        try:
            yield self
        finally:
            self.users -= 1
            if self.users == 0:
                self._idle.set()

    async def retire(self, timeout: float) -> None:
        """Stop once the requests that hold this version are answered (at most ``timeout`` seconds; those
        still running then get 503)."""
        if self.users:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._idle.wait()
            if self.users:
                logger.warning("%s version %s stopped with %d requests unanswered", self.name, self.version, self.users)
        await self.engine.stop()

    def info(self) -> dict[str, str]:
        """``mfdv_model_info``'s labels for this version."""
        m = self.engine.checkpoint.info
        return {
            "model": self.name,
            "version": self.version,
            "model_id": self.engine.model_id,
            "method": m.method,
            "arch": m.arch,
            "dataset": m.dataset,
            "backend": self.engine.backend.name,
            "device": self.engine.backend.device,
        }


@dataclass(frozen=True)
class IndexEntry:
    """A model in the repository index (Triton's repository index entry)."""

    name: str
    version: str
    state: State
    reason: str = ""


RETIRE_SECONDS = 120.0
"""Longest a replaced or unloaded version keeps serving the requests that started on it."""


class Repository:
    """The models of one process, by name; the default model for the routes that name none.

    Args:
        settings: the process's settings (``model_dir``/``model_repository``, ``default_model``,
            ``max_loaded_models``, and what every engine is built with).
        metrics: the app's metrics (each version's series is labelled with its name and version).
        decode_pool, attack_pool: the process's pools, shared by every model.
    """

    def __init__(
        self, settings: Settings, metrics: Metrics, decode_pool: BoundedPool, attack_pool: BoundedPool
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.decode_pool = decode_pool
        self.attack_pool = attack_pool
        self.root, self.folders = settings.repository()
        self.sources: dict[str, ModelSource] = {}
        self.served: dict[str, Serving] = {}
        self.status: dict[str, tuple[State, str]] = {}  # models not serving: why
        self.default: str | None = None
        self.lock = asyncio.Lock()  # one load or unload at a time
        self.compute = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="mfdv-compute",
            initializer=partial(set_torch_threads, settings.compute_threads()),
        )
        self._retiring: dict[asyncio.Task[None], Serving] = {}
        self.stopped = False

    # -- lookup (the request path) ----------------------------------------------------------

    def get(self, name: str | None = None, version: str | None = None) -> Serving:
        """The version that serves ``name`` (None: the default model); ``version``, if given, must be it.

        Raises:
            NotFound: no such model, not loaded (unloaded, failed to load: the reason), or not that version.
            ModelNotReady: the model is loading, or the process is stopping (503, Retry-After).
        """
        if self.stopped:
            raise ModelNotReady("the service is shutting down; send requests to another replica")
        if name is None:
            name = self.default
            if name is None:
                raise ModelNotReady("no model is loaded yet; retry shortly")
        serving = self.served.get(name)
        if serving is None:
            if name not in self.sources and name not in self.status:
                raise NotFound(f"unknown model {name!r}; the repository has {sorted(self.sources)}")
            state, reason = self.status.get(name, ("UNAVAILABLE", "unloaded"))
            if state == "LOADING":
                raise ModelNotReady(f"model {name!r} is loading; retry shortly")
            raise NotFound(f"model {name!r} is not loaded ({reason}); POST /v2/repository/models/{name}/load loads it")
        if not serving.engine.ready:
            raise ModelNotReady("the service is shutting down; send requests to another replica")
        if version is not None and version != serving.version:
            raise NotFound(f"model {name!r} serves version {serving.version!r}, not {version!r}")
        return serving

    def loaded(self) -> list[Serving]:
        """The versions serving now, by model name."""
        return [self.served[n] for n in sorted(self.served) if self.served[n].engine.ready]

    def index(self) -> list[IndexEntry]:
        """Every model of the repository (as last scanned) and every model loaded, with its state."""
        entries = []
        for name in sorted({*self.sources, *self.served, *self.status}):
            serving = self.served.get(name)
            if serving is not None and serving.engine.ready:
                entries.append(IndexEntry(name, serving.version, "READY"))
                continue
            source = self.sources.get(name)
            state, reason = self.status.get(name, ("UNAVAILABLE", "unloaded"))
            entries.append(IndexEntry(name, source.latest if source else "", state, reason))
        return entries

    # -- changes ----------------------------------------------------------------------------

    def rescan(self) -> list[str]:
        """Read the repository's folders again; returns why some folders are not models."""
        self.root, self.folders = self.settings.repository()
        self.sources, skipped = scan(self.folders)
        for line in skipped:
            logger.info("model repository %s: %s", self.root, line)
        return skipped

    async def start(self) -> None:
        """Load every model of the repository (at its newest version) and choose the default.

        Raises:
            LoadFailed: the default model cannot be loaded (the process must not pretend to serve it).
        """
        self.rescan()
        if self.settings.model_dir is not None and not self.sources:
            read_source(self.settings.model_dir)  # raises with the reason
        self.default = self.settings.default_model_name(sorted(self.sources))
        if self.default is not None and self.default not in self.sources:
            raise LoadFailed(
                f"the default model {self.default!r} is not in the repository {self.root} "
                f"(it has {sorted(self.sources)}); set MFDV_DEFAULT_MODEL to one of them"
            )
        for name in [self.default, *sorted(set(self.sources) - {self.default})]:
            if name is None or len(self.served) >= self.settings.max_loaded_models:
                if name is not None:
                    self.status[name] = (
                        "UNAVAILABLE",
                        f"not loaded at start: MFDV_MAX_LOADED_MODELS is {self.settings.max_loaded_models}",
                    )
                continue
            try:
                await self.load(name, rescan=False)
            except (LoadFailed, Conflict) as e:
                if name == self.default:
                    raise
                logger.error("model %s is not served: %s", name, e.message)
        logger.info(
            "model repository %s: %s loaded, default %s",
            self.root,
            ", ".join(sorted(self.served)) or "none",
            self.default,
        )

    async def load(self, name: str, version: str | None = None, *, rescan: bool = True) -> Serving:
        """Load ``name`` (its newest version, or ``version``), verified and warmed up, then route its
        requests to it; a version it replaces stops once its requests are answered.

        Raises:
            NotFound: no model ``name`` (or no ``version`` of it) in the repository.
            Conflict: ``MFDV_MAX_LOADED_MODELS`` models are loaded already.
            LoadFailed: the checkpoint is missing, altered or inconsistent, or cannot run here; what
                was serving keeps serving.
        """
        async with self.lock:
            if rescan:
                self.rescan()
            source = self.sources.get(name)
            if source is None:
                raise NotFound(f"no model {name!r} in the repository {self.root}; it has {sorted(self.sources)}")
            version = version or source.latest
            if version not in source.versions:
                raise NotFound(f"model {name!r} has no version {version!r}; it has {list(source.versions)}")
            old = self.served.get(name)
            if old is None and len(self.served) >= self.settings.max_loaded_models:
                raise Conflict(
                    f"{len(self.served)} models are loaded, the most this server holds (MFDV_MAX_LOADED_MODELS="
                    f"{self.settings.max_loaded_models}); unload one first (POST /v2/repository/models/NAME/unload)"
                )
            if old is None:
                self.status[name] = ("LOADING", "")
            started = time.perf_counter()
            try:
                serving = await asyncio.to_thread(self._build, name, version, source.versions[version])
            except asyncio.CancelledError:
                if old is None:
                    self.status[name] = ("UNAVAILABLE", "its load was cancelled (the server is stopping)")
                raise
            except Exception as e:
                reason = f"version {version} of {name!r} failed to load: {e}"
                if old is None:
                    self.status[name] = ("UNAVAILABLE", reason)
                logger.error("%s%s", reason, "; the old version keeps serving" if old is not None else "")
                raise LoadFailed(reason + ("; version " + old.version + " keeps serving" if old else "")) from None
            serving.engine.start()
            self.served[name] = serving  # new requests go here from now on
            self.status.pop(name, None)
            if old is not None:
                self._retire(old)  # before the new one's info: a reload with the same labels stays 1
            self.metrics.model_loaded(serving.info(), True)
            logger.info("loaded %s version %s in %.1f s", name, version, time.perf_counter() - started)
            return serving

    async def unload(self, name: str) -> None:
        """Stop routing requests to ``name``; its version stops once its requests are answered.

        Raises:
            NotFound: no model ``name`` is loaded or in the repository.
        """
        async with self.lock:
            serving = self.served.pop(name, None)
            if serving is None:
                if name in self.sources or name in self.status:
                    self.status[name] = ("UNAVAILABLE", "unloaded")
                    return  # unloading what is not loaded is done (as Triton answers it)
                raise NotFound(f"no model {name!r} is loaded; loaded: {sorted(self.served)}")
            self.status[name] = ("UNAVAILABLE", "unloaded")
            self._retire(serving)
            logger.info("unloaded %s version %s", name, serving.version)

    async def stop(self) -> None:
        """Stop every model (their waiting requests get 503), then the compute thread."""
        self.stopped = True
        for serving in list(self.served.values()):
            await serving.engine.stop()
        self.served.clear()
        retiring = dict(self._retiring)
        for task in retiring:
            task.cancel()
        await asyncio.gather(*retiring, return_exceptions=True)
        for serving in retiring.values():  # cancelled while waiting for their requests: stop them here
            await serving.engine.stop()
        await asyncio.to_thread(self.compute.shutdown, wait=True)

    # -- internals --------------------------------------------------------------------------

    def _build(self, name: str, version: str, path: Path) -> Serving:
        """Load, verify and warm up one version (blocking: in a thread)."""
        from ..probe.runner import probe_model  # the probe layer builds on compute, not the other way

        metrics = self.metrics.model(name, version)
        engine = InferenceEngine.load(self.settings, metrics, path=path, executor=self.compute)
        if engine.name != name:
            raise CheckpointError(f"its manifest names the model {engine.name!r}, not {name!r}")
        try:
            engine.flag  # noqa: B018  (read now: a bad `flag` fails the load, not every answer after it)
        except (TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"its manifest's `flag` is not a flag rule: {e}") from None
        s = self.settings
        return Serving(
            name=name,
            version=version,
            engine=engine,
            decode_pool=self.decode_pool,
            attack_pool=self.attack_pool,
            probe_model=probe_model(engine.checkpoint.model),
            input_spec=InputSpec(engine.input_shape, s.max_image_pixels, s.max_request_pixels),
            metrics=metrics,
        )

    def _retire(self, serving: Serving) -> None:
        self.metrics.model_loaded(serving.info(), False)
        task = asyncio.get_running_loop().create_task(serving.retire(RETIRE_SECONDS), name=f"retire-{serving.name}")
        self._retiring[task] = serving
        task.add_done_callback(lambda t: self._retiring.pop(t, None))

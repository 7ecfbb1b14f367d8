"""Keeping the model repositories of several worker processes in step.

With ``MFDV_WORKERS`` > 1 every worker process has its own ``Repository``, and a load or unload
request reaches one of them. ``python -m service`` gives the workers a shared directory
(``CONTROL_ENV``); in it:

- ``desired.json``: what should be served, ``{"generation": g, "models": {name: {"loaded": bool,
  "version": v, "generation": g_name}}}``, written whole (a new file renamed over the old one)
  under ``lock`` (``flock``);
- ``worker-<pid>.json``: each live worker's progress, ``{"generation": g, "errors": {name: why}}``.

The worker that gets a request changes its own repository first (a failed load changes nothing,
anywhere, and answers why), then publishes the change and waits until every live worker has
applied it. Every worker polls ``desired.json`` (``POLL_SECONDS``) and applies the changes it has
not made itself, oldest first; a worker that starts later (restarted by the supervisor) loads the
repository, then applies the file. The last change to a model wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ModelNotReady, NotFound, ServiceError
from .repository import Repository, Serving

logger = logging.getLogger(__name__)

CONTROL_ENV = "MFDV_REPOSITORY_CONTROL_DIR"
"""The shared directory's path, set by ``python -m service`` for its worker processes (not a setting)."""
POLL_SECONDS = 0.2
PEER_TIMEOUT_SECONDS = 120.0
"""Longest a load or unload waits for the other workers to apply it (a load verifies and warms up a model)."""


class RepositoryControl:
    """One worker's side of the shared control directory (see the module's docstring).

    Args:
        repository: this worker's repository.
        path: the shared directory.
    """

    def __init__(self, repository: Repository, path: Path) -> None:
        self.repository = repository
        self.path = path
        self.pid = os.getpid()
        self.applied: dict[str, int] = {}  # model -> generation of its last change applied here
        self.generation = 0  # of desired.json, last applied here
        self.errors: dict[str, str] = {}
        self._seen: tuple[int, int] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one change at a time in this worker

    @classmethod
    def from_env(cls, repository: Repository) -> RepositoryControl | None:
        """The control of the directory ``CONTROL_ENV`` names; None for a single process."""
        path = os.environ.get(CONTROL_ENV)
        return cls(repository, Path(path)) if path else None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the repository, apply what the other workers changed so far, then follow their changes."""
        await self.repository.start()
        await self._apply(self._read())
        self._poller = asyncio.get_running_loop().create_task(self._poll(), name="mfdv-repository-control")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        with contextlib.suppress(OSError):
            self._progress_file(self.pid).unlink()

    # -- the requests -------------------------------------------------------------------------

    async def load(self, name: str, version: str | None = None) -> Serving:
        """Load ``name`` here (``Repository.load``: its errors as they are), then in every worker.

        Raises:
            ModelNotReady: another worker failed to load it or did not answer in time (503, the reason); every
                worker is then rolled back to what it served before (that version, or not loaded), so the
                workers never serve different versions under one name.
        """
        async with self._lock:
            previous = self.repository.served.get(name)
            before = previous.version if previous is not None else None
            serving = await self.repository.load(name, version)
            generation = self._publish(name, loaded=True, version=serving.version)
        try:
            await self._wait_for_peers(name, generation, f"load {name!r}")
        except ModelNotReady as e:
            await self._roll_back(name, before)
            back = f"version {before}" if before is not None else "not loaded"
            raise ModelNotReady(f"{e.message}; every worker is back to {name!r} {back}", retry_after=30) from None
        return serving

    async def _roll_back(self, name: str, before: str | None) -> None:
        """Serve ``name`` at ``before`` again (None: not loaded), here and in every worker (best effort)."""
        async with self._lock:
            try:
                if before is None:
                    await self.repository.unload(name)
                else:
                    await self.repository.load(name, before)
            except ServiceError as e:
                logger.error("worker %d could not roll %s back: %s", self.pid, name, e.message)
            generation = self._publish(name, loaded=before is not None, version=before)
        with contextlib.suppress(ModelNotReady):
            await self._wait_for_peers(name, generation, f"roll back {name!r}")

    async def unload(self, name: str) -> None:
        """Unload ``name`` here, then in every worker."""
        async with self._lock:
            await self.repository.unload(name)
            generation = self._publish(name, loaded=False, version=None)
        await self._wait_for_peers(name, generation, f"unload {name!r}")

    # -- internals ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.path / "lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "desired.json").read_text())
        except (OSError, ValueError):
            return {"generation": 0, "models": {}}

    def _publish(self, name: str, *, loaded: bool, version: str | None) -> int:
        """Record the change this worker has made; returns its generation."""
        with self._locked():
            desired = self._read()
            generation = int(desired.get("generation", 0)) + 1
            desired["generation"] = generation
            desired.setdefault("models", {})[name] = {"loaded": loaded, "version": version, "generation": generation}
            tmp = self.path / f"desired.{self.pid}.tmp"
            tmp.write_text(json.dumps(desired))
            tmp.replace(self.path / "desired.json")
        self.applied[name] = generation
        return generation

    def _progress_file(self, pid: int) -> Path:
        return self.path / f"worker-{pid}.json"

    def _report(self) -> None:
        tmp = self.path / f"worker-{self.pid}.tmp"
        tmp.write_text(json.dumps({"generation": self.generation, "errors": self.errors}))
        tmp.replace(self._progress_file(self.pid))

    async def _apply(self, desired: dict[str, Any]) -> None:
        """Apply the changes of ``desired`` not applied here yet, oldest first; then report progress."""
        models = desired.get("models", {})
        for name, want in sorted(models.items(), key=lambda kv: kv[1]["generation"]):
            if want["generation"] <= self.applied.get(name, 0):
                continue
            try:
                if want["loaded"]:
                    await self.repository.load(name, want["version"])
                else:
                    with contextlib.suppress(NotFound):
                        await self.repository.unload(name)
                self.errors.pop(name, None)
            except ServiceError as e:
                self.errors[name] = e.message
                logger.error("worker %d cannot apply the change to %s: %s", self.pid, name, e.message)
            except Exception as e:  # recorded for the worker that asked, which answers with it
                self.errors[name] = f"{type(e).__name__}: {e}"
                logger.exception("worker %d cannot apply the change to %s", self.pid, name)
            self.applied[name] = want["generation"]
        self.generation = max(self.generation, int(desired.get("generation", 0)))
        self._report()

    async def _poll(self) -> None:
        desired_file = self.path / "desired.json"
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                st = desired_file.stat()
            except OSError:
                continue
            seen = (st.st_mtime_ns, st.st_ino)
            if seen == self._seen:
                continue
            self._seen = seen
            try:
                async with self._lock:
                    await self._apply(self._read())
            except Exception:  # the poller must outlive one bad change, or this worker stops following
                logger.exception("worker %d could not apply the repository's desired state", self.pid)

    def _peers(self) -> list[int]:
        """The other live workers that report progress."""
        pids = []
        for f in self.path.glob("worker-*.json"):
            pid = int(f.stem.split("-", 1)[1])
            if pid == self.pid:
                continue
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue  # a worker that died without cleaning up
            except PermissionError:
                pass
            pids.append(pid)
        return pids

    async def _wait_for_peers(self, name: str, generation: int, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PEER_TIMEOUT_SECONDS
        while True:
            behind, failed = [], []
            for pid in self._peers():
                try:
                    progress = json.loads(self._progress_file(pid).read_text())
                except (OSError, ValueError):
                    behind.append(pid)
                    continue
                if progress.get("generation", 0) < generation:
                    behind.append(pid)
                elif name in progress.get("errors", {}):
                    failed.append(f"worker {pid}: {progress['errors'][name]}")
            if failed:
                raise ModelNotReady(f"{what} succeeded in this worker but not in every one: {'; '.join(failed)}")
            if not behind:
                return
            if loop.time() > deadline:
                raise ModelNotReady(f"{what}: workers {behind} did not apply it within {PEER_TIMEOUT_SECONDS:g} s")
            await asyncio.sleep(0.05)

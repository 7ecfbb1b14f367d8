"""The app factory: ``create_app(settings)``; the model is loaded in the lifespan hook."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI

from .compute.control import RepositoryControl
from .compute.pool import BoundedPool, lower_thread_priority
from .compute.repository import Repository
from .config import Settings
from .deps import AppState
from .edge.admission import Admission
from .edge.lifecycle import Lifecycle
from .edge.middleware import BodyLimits, EdgeMiddleware
from .edge.openapi import install_openapi
from .errors import install_error_handlers
from .metrics import Metrics
from .routes import ROUTERS
from .routes.playground import install_playground
from .version import __version__

logger = logging.getLogger(__name__)

DESCRIPTION = """
Stochastic classifier (MFDV-SNN) serving: one backbone pass per batch, T noise draws per
request, mean probabilities plus uncertainty (entropy, mutual information, vote agreement).
Same seed, same response bytes (the `timing` object aside). See docs/service.md.
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load, verify and warm up the repository's models before serving; stop their batchers and the pools after."""
    state: AppState = app.state.mfdv
    settings = state.settings
    attack_pool = BoundedPool(
        settings.attack_workers,
        settings.attack_queue_size,
        name="attack",
        initializer=partial(lower_thread_priority, settings.attack_nice),  # attacks get what predictions leave
    )
    # Every admitted request may wait for a decode thread; the threads bound decode memory and CPU.
    decode_pool = BoundedPool(settings.decode_threads(), settings.queue_size, name="decode")
    repository = Repository(settings, state.metrics, decode_pool, attack_pool)
    control = RepositoryControl.from_env(repository)
    try:
        await (control.start() if control is not None else repository.start())
    except Exception as e:
        state.load_error = getattr(e, "message", None) or str(e)
        logger.error("cannot serve %s: %s", repository.root, state.load_error)
        await repository.stop()
        await asyncio.to_thread(attack_pool.shutdown)
        await asyncio.to_thread(decode_pool.shutdown)
        raise
    state.repository = repository  # the routes that use a model serve from here on (503 before)
    state.control = control
    state.lifecycle.start(asyncio.get_running_loop())  # SIGTERM: drain, then uvicorn's shutdown
    # Everything allocated so far (the libraries, the model) lives as long as the process: out of the
    # collector's sight, a full collection scans only what requests allocate (about 2 ms, not 150 ms
    # that block the event loop every second under load).
    gc.freeze()
    logger.info("ready: %s (default %s)", ", ".join(s.name for s in repository.loaded()), repository.default)
    try:
        yield
    finally:
        gc.unfreeze()
        state.lifecycle.stop()  # /readyz answers 503 from here on (it did already while draining)
        if control is not None:
            await control.stop()
        await repository.stop()
        await asyncio.to_thread(attack_pool.shutdown)
        await asyncio.to_thread(decode_pool.shutdown)
        state.metrics.close()
        logger.info("stopped")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the FastAPI app for ``settings`` (default: from ``MFDV_*`` environment variables).

    Nothing is loaded here; the lifespan hook loads and warms up the model, so
    ``/readyz`` answers 503 until that is done.
    """
    settings = settings or Settings()
    metrics = Metrics()
    app = FastAPI(title="MFDV-SNN inference service", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    admission = Admission(settings.max_inflight, settings.max_queue_delay_ms / 1000.0)
    lifecycle = Lifecycle(settings.drain_seconds, settings.graceful_seconds)
    app.state.mfdv = state = AppState(settings=settings, metrics=metrics, admission=admission, lifecycle=lifecycle)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    if settings.ui:
        install_playground(app)
    install_openapi(app, state)
    # One wrapper for the HTTP edge: metrics see every response (413s, admission's 503s, generic 500s);
    # admission refuses from the headers before the body is read, and admits once the whole body is in.
    app.add_middleware(
        EdgeMiddleware,
        metrics=metrics,
        routes=[r for router in ROUTERS for r in router.routes],
        lifecycle=lifecycle,
        admission=admission,
        body=BodyLimits(
            max_bytes=settings.max_body_bytes,
            timeout_s=settings.body_timeout_seconds,
            min_rate=settings.body_min_rate,
            grace_s=settings.body_grace_seconds,
        ),
    )
    return app


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """The service's log lines (``service.*`` loggers) to stderr at ``level``; uvicorn configures its own."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)
    logging.getLogger().setLevel(level.upper())


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory service.app:app_from_env`` (one app per worker process).

    A worker process starts afresh (multiprocessing's spawn): its logging is set up here, as
    ``python -m service`` sets up its own.
    """
    settings = Settings()
    configure_logging(settings.log_level)
    return create_app(settings)

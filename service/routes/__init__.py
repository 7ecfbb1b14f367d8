"""One router per resource. ``create_app`` includes every router in ``ROUTERS``, in order.

To add an endpoint group (e.g. ``/v1/attack-probe``): write ``routes/<name>.py`` with a
module-level ``router = APIRouter(...)`` and append it here.
"""

from fastapi import APIRouter

from . import health, predict, probe, repository, v2

ROUTERS: list[APIRouter] = [health.router, predict.router, v2.router, repository.router, probe.router]

__all__ = ["ROUTERS"]

"""The HTTP edge: where a request comes in and its answer goes out, before and after the routes.

In the request's order:

- ``server``: the HTTP/1.1 protocol (uvicorn's, with connection limits and header timeouts);
- ``middleware``: ``EdgeMiddleware``, the one ASGI wrapper (metrics, shutdown answers, the catch-all
  500, admission, the body read whole within its limits);
- ``admission``: which routes are admission-controlled (``@admission_controlled``) and the decision;
- ``transport``: a ``/v1`` body read by its content type and validated into the route's request model;
- ``lifecycle``: SIGTERM, draining and the grace period; the worker supervisor;
- ``openapi``: the generated OpenAPI document with the deployment's limits.

The domain exceptions and their HTTP mapping, shared by every layer, are ``service.errors``.
"""

"""The service side of ``POST /v1/attack-probe``, one job per module.

- ``prepare``: a validated request (defaults filled in by ``service.schemas.limits``) -> a ``ProbeJob``
  (attacks resolved once, caps, labels, inputs);
- ``caps``: the request's radius and cost against the ``MFDV_MAX_PROBE_*`` caps;
- ``runner``: the job in an attack-pool thread (deadline, metrics, adversarial images).

The route (``service.routes.probe``) reads the body and returns the report (``models.probe.ProbeReport``)
with its own fields; the attacks and the judging are ``models.probe``.
"""

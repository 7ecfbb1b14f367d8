"""The service side of ``POST /v1/attack-probe``, one job per module.

- ``prepare``: a validated request -> a ``ProbeJob`` (defaults, labels, inputs, caps);
- ``caps``: the request's radius and cost against the ``MFDV_MAX_PROBE_*`` caps;
- ``runner``: the job in an attack-pool thread (deadline, metrics, adversarial images).

The route (``service.routes.probe``) reads the body and renders the response; the attacks
and the judging are ``models.probe``.
"""

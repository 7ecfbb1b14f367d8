"""Container healthcheck: exit 0 when the service answers 200 on a path, 1 otherwise.

The image's ``HEALTHCHECK`` and the compose healthcheck run this (python:3.11-slim
ships no curl). Standard library only, so it works in any image with a python.

Usage::

    python healthcheck.py            # GET http://127.0.0.1:$MFDV_PORT/readyz
    python healthcheck.py /healthz   # another path

``MFDV_HEALTHCHECK_URL`` overrides the whole base URL (default ``http://127.0.0.1:$MFDV_PORT``).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/readyz"
    base = os.environ.get("MFDV_HEALTHCHECK_URL") or f"http://127.0.0.1:{os.environ.get('MFDV_PORT', '8000')}"
    url = base.rstrip("/") + path
    try:
        with urllib.request.urlopen(url, timeout=4) as resp:
            status = resp.status
    except urllib.error.HTTPError as e:
        status = e.code
    except (urllib.error.URLError, OSError) as e:
        sys.stderr.write(f"healthcheck: {url} unreachable: {e}\n")
        return 1
    if status != 200:
        sys.stderr.write(f"healthcheck: {url} answered {status}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

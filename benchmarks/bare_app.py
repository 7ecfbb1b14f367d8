"""The HTTP-stack ceiling for ``bench_service.py``: a bare FastAPI app doing a prediction request's I/O and nothing else.

    python -m benchmarks.bare_app --port 8001 [--workers 2]

``POST /v1/predict`` reads the same multipart upload the service reads (``file`` parts and
text fields), decodes each image with Pillow into float32 pixels, and returns a small JSON
object. No model, no validation beyond what decoding needs, no middleware, no metrics: what
this machine's Python HTTP stack (uvicorn with httptools on asyncio's loop, Starlette's multipart
parser, Pillow) costs per request, served the way ``python -m service`` serves (same uvicorn
options, access log off). The service's requests per second over this app's, at the same
concurrency and client, is the share of the ceiling it reaches.
"""

from __future__ import annotations

import argparse
import io

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.datastructures import UploadFile


def create_bare_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/predict")
    async def predict(request: Request) -> JSONResponse:
        async with request.form() as form:
            files = [f for f in form.getlist("file") if isinstance(f, UploadFile)]
            data = [await f.read() for f in files]
        pixels = [np.asarray(Image.open(io.BytesIO(d)).convert("L"), dtype=np.float32) / 255.0 for d in data]
        return JSONResponse({"images": len(pixels), "mean": [float(p.mean()) for p in pixels]})

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    return app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    options = {"host": args.host, "port": args.port, "log_level": "warning", "access_log": False, "loop": "asyncio"}
    if args.workers == 1:
        uvicorn.run(create_bare_app(), **options)
    else:
        uvicorn.run("benchmarks.bare_app:create_bare_app", factory=True, workers=args.workers, **options)


if __name__ == "__main__":
    main()

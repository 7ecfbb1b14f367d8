"""The anchor for ``bench_service.py``: the ~20-line FastAPI + onnxruntime app a user would write instead of the service.

    python -m benchmarks.naive_app --model-dir checkpoints/fashion_mnist_mfdv --port 8002 [--workers 2]

A sync endpoint (FastAPI runs it in its thread pool), ``UploadFile`` + Pillow, one onnxruntime
``session.run`` per request on the checkpoint's ``model.onnx`` with T standard-normal noise
draws (1 intra-op thread), mean softmax, argmax, JSON. Everything below ``create_naive_app``'s
first line is the app; the rest starts it the way ``bare_app.py`` does (asyncio's loop, no access log).
"""

from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, File, Form, UploadFile
from PIL import Image


def create_naive_app() -> FastAPI:
    model_dir = Path(os.environ.get("NAIVE_MODEL_DIR", "checkpoints/fashion_mnist_mfdv"))
    manifest = json.loads((model_dir / "manifest.json").read_text())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    c, h, w = manifest["input_shape"]
    app = FastAPI()

    @app.post("/v1/predict")
    def predict(file: UploadFile = File(...), samples: int = Form(32)) -> dict:  # noqa: B008
        image = Image.open(io.BytesIO(file.file.read())).convert("L" if c == 1 else "RGB").resize((w, h))
        x = (np.asarray(image, dtype=np.float32) / 255.0).reshape(1, h, w, c).transpose(0, 3, 1, 2)
        noise = np.random.standard_normal((samples, manifest["feature_dim"])).astype(np.float32)
        logits = session.run(["logits"], {"image": x, "noise": noise})[0]  # (T, 1, K)
        e = np.exp(logits - logits.max(-1, keepdims=True))
        probs = (e / e.sum(-1, keepdims=True)).mean(0)[0]
        label = int(probs.argmax())
        return {"label": label, "class_name": manifest["class_names"][label], "probs": probs.tolist()}

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    return app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", default="checkpoints/fashion_mnist_mfdv")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8002)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    os.environ["NAIVE_MODEL_DIR"] = str(Path(args.model_dir).resolve())
    options = {"host": args.host, "port": args.port, "log_level": "warning", "access_log": False, "loop": "asyncio"}
    if args.workers == 1:
        uvicorn.run(create_naive_app(), **options)
    else:
        uvicorn.run("benchmarks.naive_app:create_naive_app", factory=True, workers=args.workers, **options)


if __name__ == "__main__":
    main()

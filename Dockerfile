# MFDV-SNN inference service.
#
#   CPU image (default):   docker build -t mfdv-snn:cpu .
#   CUDA image:            docker build --build-arg TORCH_VARIANT=cu128 --build-arg ONNXRUNTIME=onnxruntime-gpu -t mfdv-snn:cu128 .
#   Run:                   docker run --rm -p 8000:8000 mfdv-snn:cpu
#
# The runtime needs no dataset: it serves the committed checkpoints in checkpoints/ as its model
# repository, fashion_mnist_mfdv the default (mount another repository over /app/checkpoints,
# and set MFDV_DEFAULT_MODEL, to serve others; docs/service.md#model-repository).

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------
# Stage 1: resolve and install the Python dependencies into a virtualenv.
# ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS deps

# cpu | cu126 | cu128 | ... : which PyTorch wheel index torch comes from.
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/${TORCH_VARIANT}
# onnxruntime (CPU provider) or onnxruntime-gpu (CUDA provider) for MFDV_BACKEND=onnx.
ARG ONNXRUNTIME=onnxruntime

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /build
# Only the dependency list: this layer is rebuilt when dependencies change, not when code does.
COPY pyproject.toml ./
RUN python -c "import os, tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; ort = os.environ['ONNXRUNTIME']; print('\n'.join(ort + d[len('onnxruntime'):] if d.startswith('onnxruntime') else d for d in deps))" > requirements.txt \
    && cat requirements.txt \
    && pip install --no-cache-dir --extra-index-url "${TORCH_INDEX}" -r requirements.txt \
    && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# ---------------------------------------------------------------------------
# Stage 2: slim runtime: the virtualenv, the service code and the default checkpoint.
# ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="mfdv-snn" \
      org.opencontainers.image.description="MFDV-SNN robust stochastic classifier: multi-sample inference with uncertainty and attack probes" \
      org.opencontainers.image.licenses="MIT"

RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/mfdv mfdv

COPY --from=deps /opt/venv /opt/venv

# Every MFDV_* setting can be overridden at `docker run -e` / compose / k8s time.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MFDV_HOST=0.0.0.0 \
    MFDV_PORT=8000 \
    MFDV_WORKERS=1 \
    MFDV_MODEL_REPOSITORY=/app/checkpoints \
    MFDV_DEFAULT_MODEL=fashion_mnist_mfdv

WORKDIR /app
COPY --chown=mfdv:mfdv models/ ./models/
COPY --chown=mfdv:mfdv service/ ./service/
COPY --chown=mfdv:mfdv checkpoints/ ./checkpoints/
COPY --chown=mfdv:mfdv deploy/healthcheck.py ./healthcheck.py

USER 10001:10001

EXPOSE 8000

# Ready = model loaded and warmed up (GET /readyz answers 200); see deploy/healthcheck.py.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/app/healthcheck.py", "/readyz"]

# The README's start command; host, port, workers and model dir come from the MFDV_* env above.
CMD ["python", "-m", "service"]

"""FastAPI service: multi-sample stochastic inference with uncertainty, micro-batched.

Public API::

    from service import Settings, create_app
    app = create_app(Settings(model_dir="checkpoints/fashion_mnist_mfdv"))

``python -m service`` starts uvicorn on the settings from ``MFDV_*`` environment
variables (``--host``, ``--port`` and ``--model-dir`` override them).
"""

from .app import create_app
from .config import Settings
from .version import __version__

__all__ = ["Settings", "__version__", "create_app"]

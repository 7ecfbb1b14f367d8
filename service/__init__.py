"""FastAPI service: multi-sample stochastic inference with uncertainty, micro-batched.

Public API::

    from service import Settings, create_app
    app = create_app(Settings(model_dir="checkpoints/fashion_mnist_mfdv"))

``python -m service`` starts uvicorn on the settings from ``MFDV_*`` environment
variables (``--host``, ``--port`` and ``--model-dir`` override them).
"""

__version__ = "0.1.0"

from .app import create_app  # after __version__, which routes read
from .config import Settings

__all__ = ["Settings", "__version__", "create_app"]

"""Request and response models of every route (also the OpenAPI document), one module per resource."""

from .common import ErrorResponse, error_responses, json_bytes
from .predict import ModelDetail, ModelsResponse, PredictForm, PredictRequest, PredictResponse
from .probe import ProbeForm, ProbeRequest, ProbeResponse

__all__ = [
    "ErrorResponse",
    "ModelDetail",
    "ModelsResponse",
    "PredictForm",
    "PredictRequest",
    "PredictResponse",
    "ProbeForm",
    "ProbeRequest",
    "ProbeResponse",
    "error_responses",
    "json_bytes",
]

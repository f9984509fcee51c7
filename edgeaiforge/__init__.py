"""EdgeAIForge's Python SDK.

from edgeaiforge import ModelManager, Model, ModelMetadata

manager = ModelManager()  # EAF_API_URL, EAF_API_TOKEN
model = Model("my_model", "/path/to/model.onnx")
metadata = ModelMetadata("Image Classification", "1.0.0")
manager.add_model(model, metadata)  # returns once validated; raises if rejected
manager.deploy_model("my_model", "edge_device_id")  # the newest validated version
stats = manager.get_model_stats("my_model")
"""

from edgeaiforge._errors import (
    ApiError,
    AuthenticationError,
    ConfigurationError,
    ConflictError,
    ConnectionFailedError,
    DownloadIntegrityError,
    EdgeAIForgeError,
    InvalidInputError,
    InvalidRequestError,
    ModelFileError,
    ModelRejectedError,
    NotFoundError,
    PermissionDeniedError,
    ServerError,
    UnexpectedResponseError,
    ValidationTimeoutError,
)
from edgeaiforge._manager import ModelManager
from edgeaiforge._model import Model, ModelMetadata

__all__ = [
    "ApiError",
    "AuthenticationError",
    "ConfigurationError",
    "ConflictError",
    "ConnectionFailedError",
    "DownloadIntegrityError",
    "EdgeAIForgeError",
    "InvalidInputError",
    "InvalidRequestError",
    "Model",
    "ModelFileError",
    "ModelManager",
    "ModelMetadata",
    "ModelRejectedError",
    "NotFoundError",
    "PermissionDeniedError",
    "ServerError",
    "UnexpectedResponseError",
    "ValidationTimeoutError",
]

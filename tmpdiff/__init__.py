"""tmpdiff: temporal mixed precision for diffusion models.

Give each denoising step its own numeric precision, run it inside a stock diffusers pipeline,
and measure what it costs and what it loses.
"""

from .models import DEFAULT_MODEL, MODELS, ModelSpec, get_model, load_pipeline
from .precisions import PRECISIONS, Availability, Status, available_precisions, precision_status
from .schedule import Schedule
from .switch import ScheduleHandle, apply_schedule

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "PRECISIONS",
    "Availability",
    "ModelSpec",
    "Schedule",
    "ScheduleHandle",
    "Status",
    "apply_schedule",
    "available_precisions",
    "get_model",
    "load_pipeline",
    "precision_status",
]

"""Models: the frozen foundation model and the end-to-end pipeline that attacks see."""

from cropkit.models.foundation import FoundationModel, check_images
from cropkit.models.pipeline import Pipeline

__all__ = ["FoundationModel", "Pipeline", "check_images"]

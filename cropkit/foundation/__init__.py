"""Frozen foundation models and the pipeline every attack sees: the embedded ViT-MAE (`pretrain`), hub ViT-MAE
models (`model`), CLIP's image tower (`clip`), the linear and cosine heads (`heads`) and `Pipeline`."""

from cropkit.foundation.model import FoundationModel, check_images
from cropkit.foundation.pipeline import Pipeline
from cropkit.foundation.pretrain import load_foundation

__all__ = ["FoundationModel", "Pipeline", "check_images", "load_foundation"]

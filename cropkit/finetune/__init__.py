"""Robust fine-tuning of the foundation model itself: AFT, TeCoA, PMG-AFT and TRADES, one loop (`robust`)."""

from cropkit.finetune.robust import FinetuneConfig, FinetunedPipeline, finetune_robust

__all__ = ["FinetuneConfig", "FinetunedPipeline", "finetune_robust"]

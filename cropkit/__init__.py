"""cropkit: downstream adversarial robustness without adversarially fine-tuning the foundation model.

The library behind the numbered notebooks, one subpackage per part of the papers, each layer importing only
the layers below it (the contract in `pyproject.toml`, checked by the test suite):
- `cropkit.runs`: notebook runs, batch reproduction, reports, the compute plan (the top layer);
- `cropkit.cropd`, `cropkit.acl`, `cropkit.finetune`: the three method families, independent of each other;
- `cropkit.eval`: attacks, evaluation, the gradient-masking audit, records and statistics, the SLF / ALF heads,
  `benchmark` (a RobustBench-style evaluation and model card in one call);
- `cropkit.foundation`: frozen foundation models (the embedded ViT-MAE, hub ViT-MAE, CLIP), heads, the pipeline;
- `cropkit.data`: datasets; `cropkit.core`: files and caches, input checks, progress, devices, the training loop.
"""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """`cropkit.benchmark`, imported on first use: the package's own import stays light (PEP 562)."""
    if name == "benchmark":
        from cropkit.eval.benchmarking import benchmark

        return benchmark
    raise AttributeError(f"module 'cropkit' has no attribute {name!r}")

"""Evaluation: torchattacks' attacks (`attacks`) and the training-time ascent (`ascent`), `evaluate` with its
records and intervals (`evaluate`, `records`, `stats`), the gradient-masking audit (`audit`, `checks`), the
downstream heads SLF and ALF (`protocols`), and `benchmark`, a RobustBench-style evaluation and model card in one
call (`from cropkit.eval import benchmark` gives the function; the module is `sys.modules["cropkit.eval.benchmark"]`).
"""

from cropkit.eval.attacks import AttackSpec, pgd
from cropkit.eval.benchmark import BenchmarkResult, benchmark

__all__ = ["AttackSpec", "BenchmarkResult", "benchmark", "pgd"]

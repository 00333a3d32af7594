"""Evaluation: torchattacks' attacks (`attacks`) and the training-time ascent (`ascent`), `evaluate` with its
records and intervals (`evaluate`, `records`, `stats`), the gradient-masking audit (`audit`, `checks`), the
downstream heads SLF and ALF (`protocols`), and `benchmarking`: a RobustBench-style evaluation and model card in
one call (`cropkit.benchmark`)."""

from cropkit.eval.attacks import AttackSpec, pgd

__all__ = ["AttackSpec", "pgd"]

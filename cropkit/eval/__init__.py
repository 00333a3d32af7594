"""Evaluation: torchattacks' attacks (`attacks`) and the training-time ascent (`ascent`), `evaluate` with its
records and intervals (`evaluate`, `records`, `stats`), the gradient-masking audit (`audit`, `checks`) and the
downstream heads SLF and ALF (`protocols`)."""

from cropkit.eval.attacks import AttackSpec, pgd

__all__ = ["AttackSpec", "pgd"]

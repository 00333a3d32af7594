"""Numbers reported by the papers the kit reproduces, for display beside the kit's own measurements.

These are citations, not results: each table names its source (`../shared/docs/METHOD.md` summarises them).
"""

from __future__ import annotations

# CRoPD (Liu, Huang, Xing, arXiv 2504.10850), via its public summary; PGD-10, linear head on ViT-MAE-Large.
CROPD_PAPER = {
    "source": "CRoPD paper (arXiv 2504.10850), public summary",
    "robust_gain_over_identity_pgd10": {"CIFAR-10": 13.68, "CIFAR-100": 5.56, "SVHN": 5.84},  # points
    "transfer_cifar10_to_cifar100_pgd10": (28.72, 34.28),  # Identity -> CRoPD, %
    "clean_cost_points": (0.1, 1.7),
    "identity_cifar10_pgd10_percent": (2.0, 3.0),
}

"""Numbers reported by the papers the kit reproduces, for display beside the kit's own measurements.

These are citations, not results: each table names its source (`docs/methods.md` summarises them).
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

# RobustSSL leaderboard (CIFAR-10, ResNet-18, AutoAttack standard, L-inf eps 8/255), via docs/methods.md section 2:
# (robust accuracy, standard accuracy) in % for each pre-training method and downstream protocol.
ROBUSTSSL_LEADERBOARD = {
    "source": "RobustSSL leaderboard (CIFAR-10, ResNet-18, AutoAttack, L-inf eps 8/255), via docs/methods.md",
    "rows": {
        "ACL": {"SLF": (39.17, 78.22), "ALF": (40.60, 75.53), "AFF": (49.60, 81.25)},
        "DynACL": {"SLF": (45.09, 75.41), "ALF": (45.67, 72.97), "AFF": (50.52, 81.86)},
        "DynACL-RCS": {"SLF": (44.29, 77.14), "ALF": (45.75, 74.95), "AFF": (49.63, 80.70)},
        "DynACL-AIR": {"SLF": (45.17, 78.08), "ALF": (46.14, 77.42), "AFF": (50.58, 82.74)},
    },
}

"""Which training runs a comparison of methods is made over: the unit of replication is a training run.

A method's number depends on two sources of training randomness: the training seed of the model that the method
trains (initialisation, batch order, attack starts, augmentation) and the pre-training run of the foundation model
it sits on. `training_runs` crosses them economically: every seed on the first foundation model (their spread is
the seed's), and each further foundation model with one of those seeds (a pair that shares the seed, and with it
the pre-processor's weights, differs only in the foundation model). The runs with distinct foundation models and
distinct seeds (`independent_runs`) are independent replicates of the whole training.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from cropkit.core.validate import items, require

Run = tuple[str, int]  # (foundation model spec, training seed)


def training_runs(foundation: str, seeds: Sequence[int], more_foundations: Sequence[str] = ()) -> list[Run]:
    """Every seed on `foundation`, then the k-th of `more_foundations` with the (k+1)-th seed."""
    seeds = items("seeds", seeds, int, "seed", "pass training seeds, e.g. [0, 1, 2]")
    require(len(set(seeds)) == len(seeds), "seeds", seeds, "repeats a seed", "list each training seed once")
    more = items("more_foundations", more_foundations, str, "foundation model",
                 "pass foundation model specs such as ['embedded@1', 'embedded@2'], or [] for one model", at_least=0)
    require(len(more) < len(seeds), "more_foundations", list(more),
            f"needs a seed of its own beside the first: {len(more)} further models, {len(seeds)} seeds",
            f"pass at least {len(more) + 1} seeds, or fewer further foundation models")
    require(foundation not in more and len(set(more)) == len(more), "more_foundations", list(more),
            f"repeats a foundation model (the first is {foundation!r})", "list each further model once")
    return [(foundation, s) for s in seeds] + [(spec, seeds[k + 1]) for k, spec in enumerate(more)]


def independent_runs(runs: Sequence[tuple[Hashable, Hashable]]) -> list[tuple[Hashable, Hashable]]:
    """The runs, in order, that share neither a foundation model nor a seed with an earlier one kept: independent
    replicates of the whole training. With one foundation model that is every run (one per seed)."""
    if len({f for f, _ in runs}) == 1:
        return list(runs)
    kept: list[tuple[Hashable, Hashable]] = []
    for f, s in runs:
        if all(f != g and s != t for g, t in kept):
            kept.append((f, s))
    return kept

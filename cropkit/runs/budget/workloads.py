"""What each notebook computes, as jobs: one function per notebook in `WORKLOADS`, of the parameters its run
receives. A job is `examples` images, each `passes` forward passes of one network. When a notebook changes what it
runs, change its function here (tests/test_budget.py times the quick profile against its estimate)."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cropkit.acl.pretrain import ACLConfig, RCSConfig
from cropkit.cropd.autoencoders import VIT_SIZES
from cropkit.cropd.config import PreprocessorConfig
from cropkit.cropd.train import MONITOR_SIZE, epochs_for_steps
from cropkit.eval.attacks import AttackSpec, pgd
from cropkit.finetune.robust import FinetuneConfig
from cropkit.foundation.heads import WEIGHT_DECAYS
from cropkit.runs.budget.facts import (
    HOST_FLOPS,
    PEAK_FLOPS,
    DatasetFacts,
    Network,
    Precision,
    autoencoder_network,
    dataset_facts,
    foundation_facts,
    foundation_network,
    mae_pretraining_network,
    resnet_network,
)
from cropkit.runs.budget.passes import (
    SURVIVING,
    acl_passes,
    attack_passes,
    finetune_passes,
    measured_acl_passes,
    measured_attack_passes,
    measured_finetune_passes,
    measured_preprocessor_passes,
    preprocessor_passes,
)
from cropkit.runs.design import training_runs

# L-BFGS evaluations per head fit (measured: 955 for the six fits of the MNIST-5k pixel probe, about 160 each;
# convergence varies with the data).
HEAD_EVALUATIONS = 160

@dataclass(frozen=True)
class Job:
    """`examples` images, each `passes` forward passes of `network` (closed form; `measured` when counted)."""

    what: str
    column: Literal["train", "eval"]
    network: Network
    examples: float
    passes: float
    precision: Precision
    batch: int
    backward: bool = True  # differentiates through `network` (its activations are kept)
    trained: int = 0  # parameters trained with AdamW
    measured: float | None = None
    key: Hashable | None = None  # a cached artifact's identity: trained once per profile

    @property
    def flops(self) -> float:
        return self.examples * self.passes * self.network.forward_flops

    @property
    def measured_flops(self) -> float:
        passes = self.measured if self.measured is not None else self.passes
        return self.examples * passes * self.network.forward_flops

    def seconds(self, mfu: float, throughput: float | None = None) -> float:
        if throughput is None:
            throughput = HOST_FLOPS if self.precision == "host" else PEAK_FLOPS[self.precision] * mfu
        return self.flops / throughput

    def memory_bytes(self) -> float:
        if self.precision == "host":
            return 0.0  # not on the GPU
        bytes_per = 2 if self.precision == "bf16" else 4
        kept = self.batch * self.network.activations * bytes_per if self.backward else 0.0
        return 4 * self.network.parameters + 12 * self.trained + kept


class Workload:
    """What one run computes, built by a notebook's function from its parameters."""

    def __init__(self, params: Mapping[str, Any], measure: bool = True) -> None:
        self.p = dict(params)
        self.measure = measure
        self.jobs: list[Job] = []
        self.datasets: set[str] = set()
        self.foundations: set[str] = set()

    # -- the pieces the notebooks share ---------------------------------------------------------------------
    def data(self, name: str) -> DatasetFacts:
        self.datasets.add(name)
        return dataset_facts(name)

    def foundation(self, dataset: str, spec: str | None = None) -> Network:
        """The foundation model `spec` (default: the `foundation` parameter) on `dataset`'s images."""
        spec, d = spec or self.p["foundation"], self.data(dataset)
        facts = foundation_facts(spec, d.channels)
        self.foundations.add(spec)
        if facts.pretraining is not None:
            pre = facts.pretraining
            pre_data = dataset_facts(pre.dataset)
            self.add(f"MAE pre-training of {spec}", "train", mae_pretraining_network(pre, pre_data.channels),
                     pre.epochs * pre_data.train, 3.0, "fp32", pre.batch_size,
                     trained=foundation_network(spec, d.image_size, d.channels).parameters, key=pre)
        return foundation_network(spec, d.image_size, d.channels, self.p.get("pooling", "mean"))

    def add(self, what: str, column: Literal["train", "eval"], network: Network, examples: float, passes: float,
            precision: Precision, batch: int, **fields: Any) -> None:
        if examples > 0:
            self.jobs.append(Job(what, column, network, examples, passes, precision, batch, **fields))

    def measured(self, function: Callable[..., float], *args: Any, plus: float = 0.0) -> float | None:
        """`function(*args) + plus` when this plan measures pass counts, else None (closed form only)."""
        return function(*args) + plus if self.measure else None

    def preprocessor(self, config: Any) -> Network:
        """Train `config` (a `PreprocessorConfig`) as `train_preprocessor` does; return its network."""
        d = self.data(config.dataset)
        ae = autoencoder_network(config.architecture, d.channels, d.image_size, config.width, config.latent_channels,
                                 config.depth)
        # The sized ViTs always see 8 x 8 patches: their pass counts at 32x32 are those at any resolution.
        size = 32 if config.architecture in VIT_SIZES else d.image_size
        measured = self.measured(measured_preprocessor_passes, config.kind, config.architecture, d.channels, size,
                                 config.width, config.latent_channels, config.depth)
        train = d.train if config.per_class is None else min(config.per_class * d.classes, d.train)
        self.add(f"train {config.name} ({config.architecture})", "train", ae, config.epochs * train,
                 preprocessor_passes(config.kind, ae.encoder_share), "bf16", config.batch_size,
                 trained=ae.parameters, measured=measured, key=config)
        # Per monitor image and epoch: PSNR's whole pass; L_con clean, FGSM (3) and attacked; the latent similarity.
        self.add(f"monitor {config.name}", "train", ae, config.epochs * min(MONITOR_SIZE, d.test),
                 1 + 6 * ae.encoder_share, "bf16", MONITOR_SIZE, key=config)
        return ae

    def slf(self, stack: Network, dataset: str, n: int | None = None) -> None:
        """`fit_slf`: features of the clean training set through the frozen stack, then the linear head."""
        n = n or self.data(dataset).train
        self.add(f"SLF features ({stack.name})", "train", stack, n, 1.0, "bf16", 256, backward=False)
        self.head(n, stack.feature_dim, self.data(dataset).classes)

    def head(self, n: int, features: int, classes: int) -> None:
        """`train_linear_head` on the CPU: a fit per weight decay on 80% of the data, a refit on all of it, each
        `HEAD_EVALUATIONS` forward and backward passes (3 x 2 x features x classes FLOPs per example)."""
        linear = Network("linear head", 2.0 * features * classes, features * classes, 0.0)
        fits = 0.8 * len(WEIGHT_DECAYS) + 1
        self.add(f"linear head ({features} features, {classes} classes)", "train", linear, n,
                 3 * HEAD_EVALUATIONS * fits, "host", n, backward=False)

    def evaluate(self, stack: Network, n: int, attacks: Iterable[AttackSpec], classes: int, role: str) -> None:
        """`evaluate(...)` (bf16 autocast): a clean pass, then each attack and a prediction of its examples."""
        attacks = list(attacks)
        self.add(f"clean pass ({stack.name})", "eval", stack, n, 1.0, "bf16", 256, backward=False)
        for spec in attacks:
            measured = (self.measured(measured_attack_passes, spec.kind, spec.steps, plus=1.0)
                        if spec.kind in ("pgd", "apgd-ce") and spec.restarts == 1 else None)
            closed = attack_passes(spec, classes, SURVIVING[role]) + 1
            self.add(f"{spec.label} ({stack.name})", "eval", stack, n, closed, "bf16", 256, measured=measured)

    def alf(self, stack: Network, n: int, epochs: int, steps: int) -> None:
        """`fit_alf`: PGD through the whole pipeline for every example, then the head's step."""
        self.add(f"ALF PGD-{steps} ({stack.name})", "train", stack, epochs * n, 2 * steps + 1, "bf16", 128,
                 measured=self.measured(measured_attack_passes, "pgd", steps, plus=1.0))

    def finetune(self, stack: Network, config: Any, n: int, start: Hashable) -> None:
        self.add(f"fine-tune {config.name}", "train", stack, config.epochs * n,
                 finetune_passes(config.method, config.attack_steps), "bf16", config.batch_size,
                 trained=stack.parameters, measured=self.measured(measured_finetune_passes, config.method,
                                                                  config.attack_steps),
                 key=(config, start))

    def n(self, key: str, dataset: str) -> int:
        """A notebook's example count parameter (None: the whole test split)."""
        value, test = self.p.get(key), self.data(dataset).test
        return test if value is None else min(int(value), test)


def strong(p: Mapping[str, Any], key: str = "strong_attack") -> AttackSpec:
    return AttackSpec(p[key], p["eps"], steps=p.get("strong_steps", 10))


# One function per notebook: what it runs, as a function of its parameters (keep in step with the notebook).
def _ae_config(p: Mapping[str, Any], **fields: Any) -> PreprocessorConfig:
    return PreprocessorConfig(**({"dataset": p.get("dataset"), "eps": p["eps"], "seed": p["seed"]} | fields))


def nb00(w: Workload) -> None:
    p, d = w.p, w.data(w.p["dataset"])
    fm = w.foundation(p["dataset"])
    w.add("probe features (train + test)", "train", fm, d.train + d.test, 1.0, "bf16", 256, backward=False)
    w.head(d.train, fm.feature_dim, d.classes)
    w.head(d.train, d.channels * d.image_size**2, d.classes)  # the same head on raw pixels
    n = w.n("n_eval", p["dataset"])
    w.evaluate(fm, d.test, [], d.classes, "identity")  # the probe's accuracy check
    attacks = [pgd(p["eps"], 10), pgd(p["eps"], 20), AttackSpec(p["autoattack"], p["eps"])]
    w.evaluate(fm, n, attacks, d.classes, "identity")
    w.evaluate(fm, n, [pgd(e, 10) for e in p["eps_grid"]], d.classes, "identity")


def _bound_family(w: Workload, epochs: list[int]) -> list[Any]:
    p = w.p
    common = dict(dataset=p["dataset"], eps=p["eps"], architecture=p["architecture"], seed=p["seed"])
    configs = [PreprocessorConfig.for_lambda(lam, epochs=p["ae_epochs"], **common) for lam in p["lambdas"]]
    configs.append(PreprocessorConfig(kind="adv-recon", lam=0.0, epochs=p["ae_epochs"], **common))
    return configs + [PreprocessorConfig.for_lambda(1.0, epochs=e, **common) for e in epochs]


def nb01(w: Workload) -> None:
    """The fit family, then the disjoint test family (other lambdas, training lengths, denoising radii)."""
    p = w.p
    fm, n = w.foundation(p["dataset"]), w.n("n_eval", p["dataset"])
    common = dict(dataset=p["dataset"], eps=p["eps"], architecture=p["architecture"], seed=p["seed"])
    tests = [PreprocessorConfig.for_lambda(lam, epochs=p["ae_epochs"], **common) for lam in p["test_lambdas"]]
    tests += [PreprocessorConfig.for_lambda(1.0, epochs=e, **common) for e in p["test_epochs"]]
    tests += [PreprocessorConfig(kind="adv-recon", lam=0.0, epochs=p["ae_epochs"], **{**common, "eps": e})
              for e in p["test_denoising_eps"]]
    for config in _bound_family(w, p["short_epochs"]) + tests:
        ae = w.preprocessor(config)
        w.slf(ae + fm, p["dataset"])
        w.add(f"bound: CE PGD-{p['ce_steps']} x{p['restarts']} ({config.name})", "eval", ae + fm, n,
              1 + p["restarts"] * (2 * p["ce_steps"] + 1), "fp32", 128)
        w.add(f"bound: L_con FGSM and PGD-{p['con_steps']} x{p['restarts']} ({config.name})", "eval", ae, n,
              ae.encoder_share * (1 + 3 + p["restarts"] * 2 * p["con_steps"] + 2), "fp32", 128)


def nb02(w: Workload) -> None:
    """Every pre-processor per seed; per training run (`design.training_runs`) Identity once per foundation model and
    each seed's pre-processors with SLF heads; ALF heads on the first run only."""
    p, d = w.p, w.data(w.p["dataset"])
    common = dict(architecture=p["architecture"], epochs=p["ae_epochs"])
    trained = {}
    for seed in p["seeds"]:
        for kind, lam in (("recon", 0.0), ("adv-recon", 0.0), ("cropd", p["lam"])):
            config = _ae_config(p, kind=kind, lam=lam, seed=seed, **common)
            ae = trained[(kind, seed)] = w.preprocessor(config)
            w.add(f"PSNR ({config.name}, seed {config.seed})", "eval", ae, d.test, 1.0, "bf16", 512, backward=False)
    n = w.n("n_eval", p["dataset"])
    attacks = [pgd(p["eps"], 10), pgd(p["eps"], 20), strong(p)]
    runs = training_runs(p["foundation"], p["seeds"], p.get("more_foundations", []))
    identities: set[str] = set()
    for spec, seed in runs:
        fm = w.foundation(p["dataset"], spec)
        stacks = ([(fm, "identity")] if spec not in identities else [])
        stacks += [(ae + fm, "defended") for (_, s), ae in trained.items() if s == seed]
        identities.add(spec)
        for stack, role in stacks:
            w.slf(stack, p["dataset"])
            w.evaluate(stack, n, attacks, d.classes, role)
            if (spec, seed) == runs[0]:
                w.alf(stack, min(p["n_alf_train"], d.train), p["alf_epochs"], p["alf_steps"])
                w.evaluate(stack, n, attacks, d.classes, role)


def nb03(w: Workload) -> None:
    p, d = w.p, w.data(w.p["dataset"])
    fm, n = w.foundation(p["dataset"]), w.n("n_eval", p["dataset"])
    for seed in p["seeds"]:
        for lam in p["lambdas"]:
            config = PreprocessorConfig.for_lambda(lam, dataset=p["dataset"], eps=p["eps"], tau=p["tau"],
                                                   architecture=p["architecture"], epochs=p["ae_epochs"], seed=seed)
            ae = w.preprocessor(config)
            w.slf(ae + fm, p["dataset"])
            w.evaluate(ae + fm, n, [pgd(p["eps"], 10), strong(p)], d.classes, "defended")
            w.add(f"PSNR and L_con ({config.name}, seed {seed})", "eval", ae, n, 1 + 5 * ae.encoder_share, "bf16", 256)


def nb04(w: Workload) -> None:
    p = w.p
    names = p["datasets"]
    fm = w.foundation(names[0])
    aes = {name: w.preprocessor(_ae_config(p, kind="cropd", lam=p["lam"], dataset=name,
                                           architecture=p["architecture"], epochs=p["ae_epochs"])) for name in names}
    for target in names:
        d, n = w.data(target), w.n("n_eval", target)
        for source in [None, *names]:
            stack = fm if source is None else aes[source] + fm
            w.slf(stack, target)
            w.evaluate(stack, n, [pgd(p["eps"], 10), strong(p)], d.classes,
                       "identity" if source is None else "defended")


def nb05(w: Workload) -> None:
    p, d = w.p, w.data(w.p["dataset"])
    n_pre = min(p["n_pretrain"] or d.train, d.train)
    n_down = min(p["n_downstream"] or d.train, d.train)
    n, hard = w.n("n_eval", p["dataset"]), strong(p)
    resnet = resnet_network(d.channels, d.image_size, p["width"], p["blocks_per_stage"])
    common = dict(dataset=p["dataset"], n_train=p["n_pretrain"], width=p["width"],
                  blocks_per_stage=p["blocks_per_stage"],
                  epochs=p["epochs"], warmup_epochs=p["lr_warmup_epochs"], batch_size=p["batch_size"], eps=p["eps"],
                  attack_steps=p["attack_steps"], anneal_interval=p["anneal_interval"])
    for seed in p.get("seeds", [p["seed"]]):
        _acl_family_run(w, p, d, common | {"seed": seed}, n_pre, n_down, n, hard, resnet)


def _acl_family_run(w: Workload, p: dict[str, Any], d: Any, common: dict[str, Any], n_pre: int, n_down: int, n: int,
                    hard: AttackSpec, resnet: Network) -> None:
    """One training seed of notebook 05: every encoder, its heads and evaluations, and CRoPD."""
    variants = [ACLConfig(method="acl", **common)]
    variants += [ACLConfig(method="acl", rcs=RCSConfig(k, interval=p["rcs_interval"], warmup=p["rcs_warmup"]), **common)
                 for k in p["rcs_fractions"]]
    variants += [ACLConfig(method="acl", air=True, **common), ACLConfig(method="dynacl", **common),
                 ACLConfig(method="dynacl", air=True, **common),
                 ACLConfig(method="dynacl", air=True, air_form="kl", **common)]
    aff = FinetuneConfig(method="trades", eps=p["eps"], attack_steps=p["aff_attack_steps"], epochs=p["aff_epochs"],
                         lr=p["aff_lr"], n_train=p["n_aff_train"], seed=common["seed"])
    w.add("random-init BatchNorm calibration", "train", resnet, n_pre, 1.0, "tf32", 256, backward=False)
    w.slf(resnet, p["dataset"], n_down)
    w.evaluate(resnet, n, [pgd(p["eps"], 20), hard], d.classes, "defended")
    for config in variants:
        passes = acl_passes(config.attack_steps, config.air)
        measured = w.measured(measured_acl_passes, config.attack_steps, config.air)
        examples = config.epochs * n_pre
        if config.rcs is not None:
            core = config.epochs - config.rcs.warmup
            selections = math.ceil(core / config.rcs.interval)
            examples = n_pre * (config.rcs.warmup + selections) + config.rcs.fraction * n_pre * core
        w.add(f"pre-train {config.name}", "train", resnet, examples, passes, "tf32", config.batch_size,
              trained=resnet.parameters, measured=measured, key=config)
        w.slf(resnet, p["dataset"], n_down)
        w.alf(resnet, min(p["n_alf_train"], n_down), p["alf_epochs"], 10)
        w.add(f"AFF {aff.name} ({config.name})", "train", resnet, aff.epochs * min(aff.n_train or n_down, n_down),
              finetune_passes("trades", aff.attack_steps), "bf16", aff.batch_size, trained=resnet.parameters,
              measured=w.measured(measured_finetune_passes, "trades", aff.attack_steps))
        for _protocol in ("SLF", "ALF", "AFF"):
            w.evaluate(resnet, n, [pgd(p["eps"], 20), hard], d.classes, "defended")
    ae = w.preprocessor(_ae_config(p, kind="cropd", lam=1.0, seed=common["seed"]))
    fm = w.foundation(p["dataset"])
    w.slf(ae + fm, p["dataset"], n_down)
    w.evaluate(ae + fm, n, [pgd(p["eps"], 20), hard], d.classes, "defended")


def _finetune_models(w: Workload, epochs: Iterable[int], seed: int | None = None) -> list[Any]:
    """What notebooks 06 and 07 share: the probe (and its ALF head where a method starts from it) and the runs of
    each method for each of `epochs` (per-method PGD steps, learning rate and head start, as the notebooks), with
    training seed `seed` (default: the `seed` parameter)."""
    p, d = w.p, w.data(w.p["dataset"])
    fm = w.foundation(p["dataset"])
    w.slf(fm, p["dataset"])
    n_train = min(p["n_ft_train"] or d.train, d.train)
    if "alf" in p["ft_start"].values():
        w.alf(fm, n_train, 1, 3)
    configs = [FinetuneConfig(method=m, eps=p["eps"], attack_steps=p["ft_steps"][m], epochs=e, lr=p["ft_lr"][m],
                              eps_warmup_epochs=min(p["ft_eps_warmup"][m], e),
                              last_blocks=p["last_blocks"], n_train=p["n_ft_train"],
                              batch_size=p["ft_batch_size"], seed=p["seed"] if seed is None else seed)
               for m in p["methods"] for e in epochs]
    for config in configs:  # what the fine-tuning starts from
        start = (p["foundation"], p.get("pooling"), p["dataset"], p["ft_start"][config.method])
        w.finetune(fm, config, n_train, start)
    return configs


def nb06(w: Workload) -> None:
    """Per training seed: CRoPD and every fine-tuning method; Identity once."""
    p, d = w.p, w.data(w.p["dataset"])
    if p.get("clip_model"):
        raise ValueError("the plan does not model CLIP (clip_model); it covers the ViT-MAE setting")
    fm = w.foundation(p["dataset"])
    models = [(fm, "identity")]
    for seed in p.get("seeds", [p["seed"]]):
        ae = w.preprocessor(_ae_config(p, kind="cropd", lam=p["lam"], epochs=p["ae_epochs"], seed=seed))
        w.slf(ae + fm, p["dataset"])
        models += [(ae + fm, "defended")] + [(fm, "defended")] * len(_finetune_models(w, [p["ft_epochs"]], seed))
    attacks = [pgd(p["eps"], 10), strong(p)]
    for stack, role in models:
        w.evaluate(stack, w.n("n_eval", p["dataset"]), attacks, d.classes, role)
        if p.get("transfer_dataset"):
            t = w.data(p["transfer_dataset"])
            w.evaluate(stack, w.n("n_eval", p["transfer_dataset"]), attacks, t.classes, role)


def nb07(w: Workload) -> None:
    """Notebook 06's runs (cached), each budget a run's weights after that many epochs: evaluations only."""
    p, d = w.p, w.data(w.p["dataset"])
    fm = w.foundation(p["dataset"])
    ae = w.preprocessor(_ae_config(p, kind="cropd", lam=p["lam"], epochs=p["ae_epochs"]))
    for _ in p["ae_budgets"]:
        w.slf(ae + fm, p["dataset"])
    stacks = [ae + fm] * len(p["ae_budgets"])
    stacks += [fm] * (len(_finetune_models(w, [p["ft_epochs"]])) * len(p["ft_budgets"]))
    for stack in stacks:
        w.evaluate(stack, w.n("n_eval", p["dataset"]), [pgd(p["eps"], 10), strong(p)], d.classes, "defended")


def nb08(w: Workload) -> None:
    p, d = w.p, w.data(w.p["dataset"])
    fm, n = w.foundation(p["dataset"]), w.n("n_audit", p["dataset"])
    common = dict(architecture=p["architecture"], epochs=p["ae_epochs"])
    stacks = [(fm, "identity")] + [(w.preprocessor(_ae_config(p, kind=k, lam=lam, **common)) + fm, "defended")
                                   for k, lam in (("recon", 0.0), ("cropd", p["lam"]))]
    eps = p["eps"]
    for stack, role in stacks:
        w.slf(stack, p["dataset"])
        audit = [pgd(min(1.0, eps * f), 10) for f in p["eps_factors"]] + [pgd(eps, s) for s in p["audit_steps"]]
        audit += [pgd(eps, 10, restarts=p["restarts"]), strong(p), pgd(eps, 10)]  # the last: the transfer check
        w.evaluate(stack, n, audit, d.classes, role)
        w.evaluate(stack, n, [pgd(eps, 20)], d.classes, role)
    for stack, role in (stacks[0], stacks[2]):  # the port and the quick attack against the reference, paired
        reference = [AttackSpec("autoattack-port", eps), AttackSpec(p["quick_attack"], eps, steps=p["quick_steps"]),
                     AttackSpec("autoattack-original", eps)]
        w.evaluate(stack, w.n("n_reference", p["dataset"]), reference, d.classes, role)


def nb09(w: Workload) -> None:
    p, d = w.p, w.data(w.p["dataset"])
    fm, n = w.foundation(p["dataset"]), w.n("n_eval", p["dataset"])
    common = dict(kind="cropd", lam=p["lam"], dataset=p["dataset"], eps=p["eps"], seed=p["seed"])
    configs = [PreprocessorConfig(architecture="conv", width=width, epochs=p["ae_epochs"], **common)
               for width in p["conv_widths"]]
    configs += [PreprocessorConfig(architecture="vit", width=p["vit_width"], depth=depth, epochs=p["vit_epochs"],
                                   **common) for depth in p["vit_depths"]]
    for config in configs:
        ae = w.preprocessor(config)
        w.slf(ae + fm, p["dataset"])
        w.evaluate(ae + fm, n, [pgd(p["eps"], 10), strong(p)], d.classes, "defended")
    w.slf(fm, p["dataset"])  # the floor: no pre-processor
    w.evaluate(fm, n, [pgd(p["eps"], 10), strong(p)], d.classes, "identity")


def nb10(w: Workload) -> None:
    p, d = w.p, w.data(w.p["dataset"])
    fm = w.foundation(p["dataset"])
    batch = PreprocessorConfig().batch_size
    steps = p["ae_epochs"] * math.ceil(d.train / batch)
    arms = [(p["dataset"], n, d.classes) for n in p["per_class"]]
    arms += [(f"{p['dataset']}[{','.join(str(c) for c in range(k))}]", p["fixed_total"] // k, k)
             for k in p["class_counts"]]
    n = min(p["n_eval_per_class"] * d.classes, d.test)
    for name, per_class, classes in arms:
        size = d.train if per_class is None else min(per_class * classes, d.train)
        for free in [False, True] if p["label_free"] else [False]:
            config = PreprocessorConfig(kind="cropd", lam=p["lam"], dataset=name, eps=p["eps"], per_class=per_class,
                                        label_free=free, epochs=epochs_for_steps(steps, size, batch), seed=p["seed"])
            ae = w.preprocessor(config)
            w.slf(ae + fm, p["dataset"])
            w.evaluate(ae + fm, n, [pgd(p["eps"], 10), strong(p)], d.classes, "defended")


def nb11(w: Workload) -> None:
    p, d = w.p, w.data(w.p["dataset"])
    fm, n = w.foundation(p["dataset"]), w.n("n_eval", p["dataset"])
    for train_eps in p["train_eps"]:
        ae = w.preprocessor(PreprocessorConfig(kind="cropd", lam=p["lam"], dataset=p["dataset"], eps=train_eps,
                                               epochs=p["ae_epochs"], seed=p["seed"]))
        w.slf(ae + fm, p["dataset"])
        w.add("latent similarity", "eval", ae, n, ae.encoder_share, "fp32", 128, backward=False)
        for test_eps in p["test_eps"]:
            w.evaluate(ae + fm, n, [pgd(test_eps, 10), strong(p | {"eps": test_eps})], d.classes, "defended")
            w.add(f"bound: CE PGD-{p['ce_steps']} x{p['restarts']}", "eval", ae + fm, n,
                  1 + p["restarts"] * (2 * p["ce_steps"] + 1), "fp32", 128)
            w.add(f"bound: L_con FGSM and PGD-{p['con_steps']} x{p['restarts']}", "eval", ae, n,
                  ae.encoder_share * (1 + 3 + p["restarts"] * 2 * p["con_steps"] + 2), "fp32", 128)


WORKLOADS: dict[str, Callable[[Workload], None]] = {
    "00": nb00, "01": nb01, "02": nb02, "03": nb03, "04": nb04, "05": nb05, "06": nb06, "07": nb07, "08": nb08,
    "09": nb09, "10": nb10, "11": nb11}

"""`cropkit plan --profile NAME`: what a profile will cost before anything runs (nothing is trained or downloaded).

For every run of every notebook: training and evaluation FLOPs, hours on one H100 at a stated model-FLOPs
utilisation (MFU), peak GPU memory and the download size; then the total. How (kit choices, stated to be checked):
- Each notebook's workload is one function in `WORKLOADS` of the parameters the run will receive, returning its
  jobs (`Job`: `examples` images, each `passes` forward passes of one network). When a notebook changes what it
  runs, change its function; `tests/test_budget.py` times the quick profile against its estimate.
- A forward pass's FLOPs: `cost.vit_forward_flops` (closed form) for the foundation model, the kit's own
  modules counted on the meta device (shapes only) for the auto-encoders and the ResNet.
- Passes per example: closed form (a backward is 2 forward passes, an input-only gradient 1), and measured:
  the kit's step functions run under `cost.FlopCounter` on the real auto-encoder (2 images) and on a tiny ViT
  pipeline or ResNet for attack, fine-tuning and ACL steps (a ViT's pass counts do not depend on its size).
  The table's FLOPs are the closed form; `meas/closed` is the measured total over it.
- Attacks are costed on every example (`evaluate` attacks only the clean-correct ones: an upper bound); AutoAttack's
  later components run on the examples that survive APGD-CE, assumed `SURVIVING` of them.
- Hours: FLOPs / (peak x MFU), H100 SXM dense peaks (`PEAK_FLOPS`): bf16 for the code under autocast, TF32 for
  fp32 convolutions (cuDNN's default), fp32 for fp32 matrix products (PyTorch leaves TF32 off): the bound's
  terms, ACL and MAE pre-training run without autocast. Plus `RUN_OVERHEAD_S` per notebook run.
- Work the kit caches (pre-processors, fine-tuned models, ACL encoders, the embedded foundation model) is counted
  once, in the first run that trains it; `respect_cache=True` also drops what the cache already holds.
- The linear heads are fitted by L-BFGS on the host's CPU (`HOST_FLOPS`, `HEAD_EVALUATIONS`); their hours are
  in the total, since the notebook waits for them.
- Peak memory: the largest job's weights (4 bytes per parameter), its trained parameters' gradients and AdamW
  states (12 bytes each) and, where it differentiates through a network, the batch's activations (every leaf
  module's output, counted on the meta device; 2 bytes each under bf16, 4 under fp32).
"""

from __future__ import annotations

import ast
import time
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from cropkit.acl.pretrain import ACLConfig, acl_dir
from cropkit.core import precision
from cropkit.core.checkpoint import existing_directory
from cropkit.cropd.autoencoders import build_autoencoder
from cropkit.cropd.config import PreprocessorConfig
from cropkit.cropd.train import preprocessor_dir, preprocessor_loss
from cropkit.data import load_dataset
from cropkit.eval.attacks import pgd
from cropkit.foundation import FoundationModel, Pipeline
from cropkit.foundation.heads import LinearHead
from cropkit.foundation.pretrain import MAEConfig, build_mae, foundation_dir
from cropkit.runs.budget.facts import HOST_FLOPS, MFU, RUN_OVERHEAD_S, dataset_facts, foundation_facts
from cropkit.runs.budget.passes import SURVIVING, count_flops
from cropkit.runs.budget.workloads import WORKLOADS, Job, Workload
from cropkit.runs.profiles import notebook_parameters, plan


@dataclass
class RunEstimate:
    """One notebook run's jobs, those it finds trained by an earlier run (`cached`), and what it reads."""

    name: str
    jobs: list[Job]
    cached: list[Job]
    datasets: set[str]
    foundations: set[str]
    overhead_s: float = RUN_OVERHEAD_S

    @property
    def keys(self) -> set[Hashable]:
        """The cached artifacts this run trains or reuses."""
        return {j.key for j in self.jobs + self.cached if j.key is not None}

    def flops(self, column: str | None = None) -> float:
        return sum(j.flops for j in self.jobs if column in (None, j.column))

    def measured_ratio(self) -> float:
        total = self.flops()
        return sum(j.measured_flops for j in self.jobs) / total if total else 1.0

    def seconds(self, mfu: float = MFU, throughput: float | None = None) -> float:
        return self.overhead_s + sum(j.seconds(mfu, throughput) for j in self.jobs)

    def peak_memory_bytes(self) -> float:
        return max((j.memory_bytes() for j in self.jobs), default=0.0)

    def download_bytes(self, seen: set[str] | None = None) -> float:
        """Bytes to download for this run; `seen` (updated) holds sources already counted."""
        seen = set() if seen is None else seen
        total = 0.0
        for source, size in downloads(self.datasets, self.foundations).items():
            if source not in seen:
                seen.add(source)
                total += size
        return total


def downloads(datasets: Iterable[str], foundations: Iterable[str]) -> dict[str, int]:
    """What must be fetched, by source: the torchvision archives and the hub weights."""
    sources = {f.source: f.download_bytes for f in map(dataset_facts, datasets)}
    for spec in foundations:
        facts = foundation_facts(spec)
        sources[spec] = facts.download_bytes
    return {k: v for k, v in sources.items() if v}


@dataclass
class Plan:
    """A profile's runs as `estimate` costs them, with the throughput they are timed at."""

    profile: str
    runs: list[RunEstimate]
    mfu: float = MFU
    throughput: float | None = None  # FLOP/s for every job (a calibrated machine), instead of the H100 peaks
    device: str = "H100 SXM"

    def seconds(self) -> float:
        return sum(r.seconds(self.mfu, self.throughput) for r in self.runs)

    def schedule(self, workers: int) -> list[list[RunEstimate]]:
        """The runs in `workers` queues, one per GPU: runs that train or reuse one cached artifact share a queue, in
        profile order (the first trains it, the later ones find it in the cache; two processes never train it at
        once), and the groups go longest first to the least loaded queue."""
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        group = list(range(len(self.runs)))

        def root(i: int) -> int:
            while group[i] != i:
                i = group[i]
            return i

        owner: dict[Hashable, int] = {}
        for i, run in enumerate(self.runs):
            for key in run.keys:
                group[root(i)] = root(owner.setdefault(key, i))
        groups: dict[int, list[int]] = {}
        for i in range(len(self.runs)):
            groups.setdefault(root(i), []).append(i)
        hours = {g: sum(self.runs[i].seconds(self.mfu, self.throughput) for i in members)
                 for g, members in groups.items()}
        queues: list[list[int]] = [[] for _ in range(workers)]
        loads = [0.0] * workers
        for g in sorted(groups, key=lambda g: -hours[g]):
            w = loads.index(min(loads))
            queues[w] += groups[g]
            loads[w] += hours[g]
        return [[self.runs[i] for i in sorted(q)] for q in queues]

    def makespan(self, workers: int) -> float:
        """Seconds until the last of `workers` GPUs finishes its queue (`schedule`)."""
        return max(sum(r.seconds(self.mfu, self.throughput) for r in q) for q in self.schedule(workers))

    def table(self) -> str:
        """The per-run table and its total, as plain text."""
        unit = "h (H100)" if self.throughput is None else "h (calibrated)"
        head = ("notebook run", "train PFLOP", "eval PFLOP", "meas/closed", unit, "peak GB", "download GB", "cached")
        rows, seen = [head], set()
        for r in self.runs:
            rows.append((r.name, f"{r.flops('train') / 1e15:.3g}", f"{r.flops('eval') / 1e15:.3g}",
                         f"{r.measured_ratio():.2f}", f"{r.seconds(self.mfu, self.throughput) / 3600:.2f}",
                         f"{r.peak_memory_bytes() / 1e9:.1f}", f"{r.download_bytes(seen) / 1e9:.2f}",
                         str(len({j.key for j in r.cached}))))
        total_flops = sum(r.flops() for r in self.runs)
        fetched = downloads(set().union(*(r.datasets for r in self.runs)),
                            set().union(*(r.foundations for r in self.runs)))
        measured = sum(r.measured_ratio() * r.flops() for r in self.runs)
        rows.append(("total", f"{sum(r.flops('train') for r in self.runs) / 1e15:.3g}",
                     f"{sum(r.flops('eval') for r in self.runs) / 1e15:.3g}",
                     f"{measured / total_flops if total_flops else 1:.2f}", f"{self.seconds() / 3600:.2f}",
                     f"{max((r.peak_memory_bytes() for r in self.runs), default=0) / 1e9:.1f}",
                     f"{sum(fetched.values()) / 1e9:.2f}",
                     ""))
        widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
        lines = ["  ".join(cell.rjust(w) if c else cell.ljust(w) for c, (cell, w) in enumerate(zip(row, widths)))
                 for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
        basis = (f"{self.throughput / 1e9:.1f} GFLOP/s measured on this machine" if self.throughput is not None else
                 f"one {self.device} at {self.mfu:.0%} MFU of its dense peaks (bf16 989, TF32 495, fp32 67 TFLOP/s), "
                 f"linear heads on the host CPU at {HOST_FLOPS / 1e9:.0f} GFLOP/s")
        return "\n".join(lines + [
            f"Profile {self.profile}: {self.seconds() / 3600:.1f} hours on {basis}, "
            f"plus {RUN_OVERHEAD_S:.0f} s per run. "
            "FLOPs in closed form (meas/closed: with pass counts measured on the kit's steps); attacks on every "
            f"example, AutoAttack's later components on {SURVIVING['defended']:.0%} (Identity "
            f"{SURVIVING['identity']:.0%}) survivors; work the kit caches counted once (cached: trainings a run "
            "reuses). The assumptions: cropkit/runs/budget/__init__.py.",
            "Under torchrun (runs that share cached training stay on one GPU): "
            + ", ".join(f"{n} GPUs {self.makespan(n) / 3600:.1f} h" for n in (2, 4, 8)) + "."])


def _in_cache(key: Hashable) -> bool:
    """Whether the kit's cache already holds the artifact a job's key names (pre-processors, ACL, MAE)."""
    if isinstance(key, PreprocessorConfig):
        return existing_directory(preprocessor_dir(key)) is not None
    if isinstance(key, ACLConfig):
        return existing_directory(acl_dir(key)) is not None
    if isinstance(key, MAEConfig):
        return (foundation_dir(key) / "config.json").is_file()
    return False


def estimate(profile: str, only: Iterable[str] | None = None, overrides: Mapping[str, Any] | None = None, *,
             mfu: float = MFU, throughput: float | None = None, respect_cache: bool = False,
             measure: bool = True) -> Plan:
    """The plan of `cropkit reproduce` with the same arguments; `respect_cache` drops what the cache holds;
    `measure=False` skips the measured pass counts (seconds of counting on a CPU) and keeps the closed form."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must lie in (0, 1], got {mfu}")
    runs, trained = [], set()
    for run in plan(profile, only, overrides):
        defaults = {k: ast.literal_eval(v) for k, v in notebook_parameters(run.notebook).items()}
        workload = Workload(defaults | run.parameters, measure)
        try:
            WORKLOADS[run.notebook.stem[:2]](workload)
        except ValueError as error:
            raise ValueError(f"{run.name}: {error}") from error
        jobs, cached = [], []
        for job in workload.jobs:
            done = job.key is not None and (job.key in trained or (respect_cache and _in_cache(job.key)))
            (cached if done else jobs).append(job)
        trained |= {job.key for job in workload.jobs if job.key is not None}
        runs.append(RunEstimate(run.name, jobs, cached, workload.datasets, workload.foundations))
    return Plan(profile, runs, mfu, throughput)


def prefetch(profile: str, only: Iterable[str] | None = None, overrides: Mapping[str, Any] | None = None) -> list[str]:
    """Download (or find) and read every dataset split and hub foundation model the runs need, once, before a
    torchrun launch (whose ranks would race on one download) or to learn in minutes that a file is missing or
    broken. Returns a line per item."""
    plan = estimate(profile, only, overrides, measure=False)
    lines = []
    for name in sorted(set().union(*(r.datasets for r in plan.runs))):
        lines += [load_dataset(name, split).describe() for split in ("train", "test")]
    for spec in sorted(set().union(*(r.foundations for r in plan.runs))):
        if not spec.startswith("embedded"):  # embedded models ship with the package or are trained, not fetched
            model = FoundationModel.from_pretrained(spec)
            lines.append(f"{spec}: {sum(p.numel() for p in model.parameters()):,} parameters")
    return lines


def calibrate(device: str | None = None, repeats: int = 2) -> float:
    """This machine's FLOP/s on the quick profile's kind of work: a CRoPD step of the conv auto-encoder and PGD
    through the embedded-size ViT-MAE pipeline, FLOPs counted once, then timed (best of `repeats`)."""
    device = precision.resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        ae = build_autoencoder("conv", 1, 28).to(device)
        frozen = build_autoencoder("conv", 1, 28).requires_grad_(False)
        foundation = FoundationModel(build_mae(MAEConfig(), 1).vit, [0.5], [0.5])
        pipeline = Pipeline(frozen, foundation, LinearHead(foundation.feature_dim, 10)).to(device)
        x, y = torch.rand(128, 1, 28, 28, device=device), torch.arange(128, device=device) % 10
        config = PreprocessorConfig(eps=0.1)
        attack = pgd(0.1, 5).build(pipeline, n_classes=10, seed=0)

        def work() -> None:
            with precision.autocast(device):
                preprocessor_loss(ae, config, x, y)[0].backward()
                attack(x[:64], y[:64])
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        flops = count_flops(work)
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            work()
            timings.append(time.perf_counter() - started)
    return flops / min(timings)

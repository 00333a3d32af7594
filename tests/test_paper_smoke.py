"""The paper profile end to end, offline, at the paper's shapes: `cropkit reproduce --profile paper` with the
miniature datasets in their real formats (tests/miniature.py) under CROPKIT_DATA, a ViT-MAE with
facebook/vit-mae-large's shapes (224x224, patch 16, tiny widths) as the foundation model, and every size shrunk.

CI runs notebook 02 on CIFAR-2 (`RUNS`): torchvision's CIFAR-10 files read inside the kernel and cut to cat and
dog, the hub-shaped foundation model loaded from a folder by `from_pretrained` at 224x224, the sized
pre-processors' patch layout at tiny width (`vit-tiny`), SLF and ALF heads, PGD-10 and PGD-20, and APGD-CE in
place of the profile's original AutoAttack. The other loaders are read through the same
`load_dataset` in tests/test_paper_shapes.py. A run costs minutes on a CPU whatever its size (L-BFGS head fits,
kernel start), so more runs do not fit CI's budget; `CROPKIT_PAPER_SMOKE_RUNS=02,04` (any `--only` list) runs
others, e.g. before a GPU run.
"""

from __future__ import annotations

import json
import os

import pytest
from miniature import sitecustomize

from cropkit.runs.profiles import plan
from cropkit.runs.reproduce import reproduce

# The profile's original AutoAttack runs at its fixed strength (100 steps, Square's 5,000 queries: ten minutes on
# this CPU even at these sizes), so the smoke run takes its gradient component (APGD-CE, 10 steps); the composition
# itself is tested in tests/test_attacks_evaluate.py.
SHRINK = {"architecture": "vit-tiny", "ae_epochs": 1, "n_eval": 8, "strong_attack": "apgd-ce",
          "alf_epochs": 1, "alf_steps": 2, "n_alf_train": 16, "seeds": [0]}
RUNS = os.environ.get("CROPKIT_PAPER_SMOKE_RUNS", "02:cifar2").split(",")


@pytest.mark.paper_smoke
def test_the_paper_profile_runs_end_to_end_offline(paper_data, vit_mae_large_standin, tmp_path, monkeypatch):
    monkeypatch.delenv("SMOKE_TEST", raising=False)  # the paper profile's own values, shrunk by SHRINK alone
    monkeypatch.setenv("CROPKIT_DATA", str(paper_data))
    monkeypatch.setenv("CROPKIT_CACHE", str(tmp_path / "cache"))
    kernel_path = [str(sitecustomize(tmp_path / "site")), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in kernel_path if p))  # the kernel skips MD5s only
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny tensors: a second thread only contends for shared cores
    overrides = {"foundation": str(vit_mae_large_standin)} | {
        k: v for k, v in SHRINK.items() if any(k in r.parameters for r in plan("paper", RUNS))}
    runs = reproduce("paper", only=RUNS, overrides=overrides, out=tmp_path / "out")
    assert runs and [(r.status, r.error) for r in runs] == [("ok", "")] * len(plan("paper", RUNS))
    for run in plan("paper", RUNS, out=tmp_path / "out"):
        records = [json.loads(line) for line in
                   (run.output.parent / f"{run.notebook.stem}.jsonl").read_text().splitlines()]
        assert records and all(r["setup"].get("foundation", str(vit_mae_large_standin)) == str(vit_mae_large_standin)
                               for r in records)
        if run.name == "02_main_results:cifar2":
            assert {r["dataset"] for r in records} == {"cifar2"}
            assert {r["model"] for r in records} == {f"{m} · {p}" for m in (
                "Identity", "Recon AE", "Adv-denoising AE", "CRoPD (lambda=1)") for p in ("SLF", "ALF")}
            assert {r["attack"] for r in records} == {"PGD-10", "PGD-20", "APGD-CE-10", "worst case"}
            assert {r["setup"]["architecture"] for r in records} == {"vit-tiny"}
            assert (tmp_path / "out" / "figures" / "paper" / "cifar2" / "02_clean_vs_robust.png").is_file()

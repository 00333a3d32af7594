"""Bad inputs and faults (issue 15): refused before work starts, naming the parameter, the value and what to do;
nothing written is ever lost.

Each parametrised case was, before `cropkit.core.validate`, accepted silently (a wrong or meaningless result), or
refused from deep inside torch / transformers / safetensors with a message that named neither the parameter nor
the fix. The fault tests damage what the kit wrote (a torn results file, a truncated cache or checkpoint, a
rewritten dataset, an interrupted run) and check that every good record and every trained model survives.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from cropkit.acl.pretrain import ACLConfig, RCSConfig
from cropkit.core.checkpoint import save_weights
from cropkit.core.paths import project_root
from cropkit.core.validate import AttackOutputError, CorruptFileError, InputError, check_adversarial
from cropkit.cropd.config import PreprocessorConfig
from cropkit.cropd.train import train_preprocessor
from cropkit.data import ImageData, load_dataset
from cropkit.eval import records as results_module
from cropkit.eval.attacks import AttackSpec, pgd
from cropkit.eval.evaluate import attack_batches, evaluate
from cropkit.eval.protocols import fit_alf
from cropkit.eval.records import RecordsWarning, append_records, load_records, rejected_path
from cropkit.finetune.robust import FinetuneConfig, finetune_robust
from cropkit.foundation import FoundationModel, Pipeline
from cropkit.foundation.heads import LinearHead
from cropkit.foundation.pretrain import MAEConfig, load_foundation, pretrain_mae


def write_npz(path: Path, x: np.ndarray | None = None, y: np.ndarray | None = None,
              classes: tuple[str, ...] = ("a", "b", "c"), n: int = 12) -> str:
    """A dataset file in the shared npz format (NHWC uint8), with both splits equal."""
    x = np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8) if x is None else x
    y = np.arange(len(x)) % len(classes) if y is None else y
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y, classes=np.array(classes))
    return str(path)


@dataclass
class Context:
    tmp: Path
    pipeline: Pipeline  # tiny ViT-MAE, an (unfitted) 10-class linear head
    digits: ImageData  # 10 classes, 16 test images
    monkeypatch: pytest.MonkeyPatch

    def npz(self, name: str, **arrays: Any) -> str:
        return write_npz(self.tmp / name, **arrays)

    def two_classes(self) -> ImageData:
        grey = np.random.default_rng(1).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
        return load_dataset(self.npz("two.npz", x=grey, classes=("a", "b")), "test")


@pytest.fixture(scope="module")
def tiny_pipeline10() -> Pipeline:
    from conftest import random_architecture

    return random_architecture()


@pytest.fixture
def ctx(tmp_path, tiny_pipeline10, monkeypatch) -> Context:
    return Context(tmp_path, tiny_pipeline10, load_dataset("digits", "test").take(16), monkeypatch)


def _nan_attack(ctx: Context) -> None:
    """An attack whose examples are NaN (what a NaN step size or NaN input gradients produce)."""
    ctx.monkeypatch.setattr(AttackSpec, "build", lambda self, model, n_classes, seed: lambda x, y: x * math.nan)
    x, y = ctx.digits.tensors()
    attack_batches(ctx.pipeline, pgd(0.1, steps=1), x, y, n_classes=10, seed=0)


def _hub_offline(ctx: Context) -> None:
    import huggingface_hub.constants

    ctx.monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network here either way; fast
    load_foundation("facebook/vit-mae-base")


def _finetune(ctx: Context, train: ImageData, config: Any) -> None:
    """`finetune_robust` with the cache in the test's folder (the old code trained and cached before failing)."""
    ctx.monkeypatch.setenv("CROPKIT_CACHE", str(ctx.tmp / "cache"))
    finetune_robust(ctx.pipeline, train, config, progress=False)


def case(make: Callable[[Context], Any], error: type[Exception], *names: str, id: str) -> Any:
    """`make(ctx)` must raise `error` whose message contains every one of `names` (the parameter, the value)."""
    return pytest.param(make, error, names, id=id)


NAN, INF = math.nan, math.inf
CASES = [
    # Configuration values that failed late and deep, or trained nothing and cached it as trained.
    case(lambda c: PreprocessorConfig(epochs=0), InputError, "PreprocessorConfig.epochs = 0", "untrained",
         id="preprocessor-epochs-0"),
    case(lambda c: PreprocessorConfig(batch_size=0), InputError, "PreprocessorConfig.batch_size = 0",
         id="preprocessor-batch-size-0"),
    case(lambda c: PreprocessorConfig(tau=0.0), InputError, "PreprocessorConfig.tau = 0.0", id="preprocessor-tau-0"),
    case(lambda c: PreprocessorConfig(width=0), InputError, "PreprocessorConfig.width = 0", id="preprocessor-width-0"),
    case(lambda c: PreprocessorConfig(eps="0.1"), InputError, "PreprocessorConfig.eps = '0.1'", "eps=0.1",
         id="preprocessor-eps-string"),
    case(lambda c: PreprocessorConfig(epochs=2.5), InputError, "PreprocessorConfig.epochs = 2.5",
         id="preprocessor-fractional-epochs"),
    case(lambda c: PreprocessorConfig(lr=-1.0), InputError, "PreprocessorConfig.lr = -1.0", id="preprocessor-lr"),
    case(lambda c: PreprocessorConfig(architecture="resnet"), InputError, "PreprocessorConfig.architecture = 'resnet'",
         "'conv'", id="preprocessor-architecture"),
    case(lambda c: PreprocessorConfig(lam=INF), InputError, "PreprocessorConfig.lam = inf", id="preprocessor-lam-inf"),
    case(lambda c: PreprocessorConfig(label_free="no"), InputError, "PreprocessorConfig.label_free = 'no'",
         id="preprocessor-flag-string"),
    case(lambda c: PreprocessorConfig(dataset=Path("x.npz")), InputError, "PreprocessorConfig.dataset",
         id="preprocessor-dataset-path-object"),
    case(lambda c: MAEConfig(epochs=0), InputError, "MAEConfig.epochs = 0", id="mae-epochs-0"),
    case(lambda c: MAEConfig(batch_size=0), InputError, "MAEConfig.batch_size = 0", id="mae-batch-size-0"),
    case(lambda c: MAEConfig(patch_size=5), InputError, "MAEConfig.patch_size = 5", "28", id="mae-patch-size"),
    case(lambda c: MAEConfig(hidden_size=30), InputError, "MAEConfig.num_heads = 4", "30", id="mae-heads"),
    case(lambda c: MAEConfig(max_shift=-1), InputError, "MAEConfig.max_shift = -1", id="mae-negative-shift"),
    case(lambda c: pretrain_mae(MAEConfig(mask_ratio=0.0)), InputError, "MAEConfig.mask_ratio = 0.0",
         id="mae-pretraining-masks-nothing"),
    case(lambda c: AttackSpec("pgd", 0.1, step=NAN), InputError, "AttackSpec.step = nan", id="attack-nan-step"),
    case(lambda c: AttackSpec("pgd", 0.1, step=INF), InputError, "AttackSpec.step = inf", id="attack-inf-step"),
    case(lambda c: AttackSpec("pgd", 0.1, steps=2.5), InputError, "AttackSpec.steps = 2.5",
         id="attack-fractional-steps"),
    case(lambda c: AttackSpec("pgd", 0.1, steps=2.0), InputError, "AttackSpec.steps = 2.0", "int 2",
         id="attack-float-steps"),
    case(lambda c: AttackSpec("pgd", "0.1"), InputError, "AttackSpec.eps = '0.1'", "eps=0.1", id="attack-eps-string"),
    case(lambda c: pgd("8/255"), InputError, "AttackSpec.eps = '8/255'", "0.0313725", id="attack-eps-fraction-string"),
    case(lambda c: AttackSpec("pgd", 0.1, random_start="no"), InputError, "AttackSpec.random_start = 'no'",
         id="attack-flag-string"),
    case(lambda c: ACLConfig(width=0), InputError, "ACLConfig.width = 0", id="acl-width-0"),
    case(lambda c: ACLConfig(tau=0), InputError, "ACLConfig.tau = 0", id="acl-tau-0"),
    case(lambda c: ACLConfig(n_train=0), InputError, "ACLConfig.n_train = 0", id="acl-n-train-0"),
    case(lambda c: ACLConfig(attack_steps=2.5), InputError, "ACLConfig.attack_steps = 2.5", id="acl-fractional-steps"),
    case(lambda c: ACLConfig(anneal_interval=0), InputError, "ACLConfig.anneal_interval = 0",
         id="acl-anneal-interval-0"),
    case(lambda c: RCSConfig(normalise="l2"), InputError, "RCSConfig.normalise = 'l2'", "minmax",
         id="rcs-normalise"),
    case(lambda c: RCSConfig(interval=1.5), InputError, "RCSConfig.interval = 1.5", id="rcs-fractional-interval"),
    case(lambda c: FinetuneConfig(batch_size=0), InputError, "FinetuneConfig.batch_size = 0",
         id="finetune-batch-size-0"),
    case(lambda c: FinetuneConfig(n_train=0), InputError, "FinetuneConfig.n_train = 0", id="finetune-n-train-0"),
    case(lambda c: FinetuneConfig(attack_step=NAN), InputError, "FinetuneConfig.attack_step = nan",
         id="finetune-nan-step"),
    case(lambda c: FinetuneConfig(alpha=-1.0), InputError, "FinetuneConfig.alpha = -1.0", id="finetune-alpha"),
    case(lambda c: _finetune(c, c.two_classes(), FinetuneConfig(epochs=1, n_train=8, attack_steps=1)), InputError,
         "pipeline", "10 classes", "2 classes", id="finetune-head-classes"),
    case(lambda c: _finetune(c, c.digits, {"method": "tecoa"}), InputError, "config = {'method': 'tecoa'}",
         "FinetuneConfig", id="finetune-config-not-a-config"),
    case(lambda c: fit_alf(c.pipeline, c.digits, pgd(0.1, steps=1), epochs=0), InputError, "epochs = 0",
         id="alf-epochs-0"),
    case(lambda c: fit_alf(c.pipeline, c.two_classes(), pgd(0.1, steps=1)), InputError, "slf", "10 classes",
         "2 classes", id="alf-head-classes"),
    # Data accepted in the wrong layout, empty, or with labels that do not index the classes.
    case(lambda c: load_dataset(c.npz("nchw.npz", x=np.zeros((6, 1, 28, 28), np.uint8)), "train"), InputError,
         "x_train", "(6, 1, 28, 28)", "transpose", id="npz-nchw"),
    case(lambda c: load_dataset(c.npz("range.npz", y=np.arange(12) % 5), "train"), InputError, "labels",
         "[0, 4]", id="labels-out-of-range"),
    case(lambda c: load_dataset(c.npz("neg.npz", y=np.arange(12) % 3 - 1), "train"), InputError, "labels",
         "[-1, 1]", id="labels-negative"),
    case(lambda c: load_dataset(c.npz("float.npz", y=np.arange(12) % 3 + 0.5), "train"), InputError, "y_train",
         "float64", id="labels-float"),
    case(lambda c: load_dataset(c.npz("empty.npz", x=np.zeros((0, 8, 8, 3), np.uint8)), "train"), InputError,
         "images", "(0, 3, 8, 8)", "empty", id="dataset-empty"),
    case(lambda c: load_dataset(c.npz("c.npz", y=np.arange(12) % 2), "train", classes=["c"]), InputError, "images",
         "empty", id="class-subset-without-images"),
    case(lambda c: load_dataset(c.npz("bin.npz", x=np.ones((12, 8, 8, 3), np.uint8)), "train"), InputError,
         "x_train", "0 or 1", id="images-cast-from-unit-floats"),
    case(lambda c: load_dataset(c.npz("names.npz", classes=("a", "a", "b")), "train"), InputError, "classes",
         "['a', 'a', 'b']", id="class-names-repeated-in-file"),
    case(lambda c: load_dataset(c.npz("rep.npz"), "train", classes=["a", "a"]), InputError, "classes",
         "['a', 'a']", id="class-subset-repeated"),
    case(lambda c: load_dataset(c.npz("none.npz"), "train", classes=[]), InputError, "classes = []",
         id="class-subset-empty"),
    case(lambda c: load_dataset(c.npz("br.npz") + "[]", "train"), InputError, "classes = []",
         id="class-subset-empty-brackets"),
    case(lambda c: load_dataset("digits", "test", image_size=0), InputError, "image_size = 0", id="image-size-0"),
    case(lambda c: load_dataset(123), InputError, "name = 123", id="dataset-name-not-text"),
    case(lambda c: c.digits.take(0), InputError, "n = 0", id="take-0"),
    case(lambda c: c.digits.take(-1), InputError, "n = -1", id="take-negative"),
    case(lambda c: ImageData("d", "test", c.digits.images, c.digits.labels.float(), c.digits.classes), InputError,
         "labels", "float32", id="imagedata-float-labels"),
    case(lambda c: ImageData("d", "test", c.digits.images, torch.eye(10)[c.digits.labels].long(), c.digits.classes),
         InputError, "labels", "(16, 10)", id="imagedata-one-hot-labels"),
    # Evaluation that would have recorded a meaningless number.
    case(lambda c: evaluate(c.pipeline, c.two_classes(), [pgd(0.1, steps=1)], model_name="m", device="cpu"),
         InputError, "pipeline", "10 classes", "2 classes", id="evaluate-head-classes"),
    case(lambda c: evaluate(c.pipeline, c.digits, [], model_name="m", device="cpu"), InputError, "attacks = []",
         id="evaluate-no-attack"),
    case(lambda c: evaluate(c.pipeline, c.digits, pgd(0.1), model_name="m", device="cpu"), InputError,
         "attacks = AttackSpec", id="evaluate-attack-not-a-list"),
    case(lambda c: evaluate(c.pipeline, c.digits, [pgd(0.1)], model_name="m", batch_size=0, device="cpu"),
         InputError, "batch_size = 0", id="evaluate-batch-size-0"),
    case(lambda c: evaluate(c.pipeline, c.digits, [pgd(0.1)], model_name="m", seed=1.5, device="cpu"), InputError,
         "seed = 1.5", id="evaluate-fractional-seed"),
    case(lambda c: evaluate(c.pipeline, c.digits, [pgd(0.1)], model_name="m", results=c.tmp, device="cpu"),
         InputError, "results", str(Path("records.jsonl")), id="evaluate-results-is-a-folder"),
    case(lambda c: evaluate(c.pipeline, c.digits, [pgd(0.1)], model_name="", device="cpu"), InputError,
         "model_name = ''", id="evaluate-empty-model-name"),
    pytest.param(lambda c: evaluate(c.pipeline, c.digits, [pgd(0.1)], model_name="m", device="cuda"), InputError,
                 ("device = 'cuda'",), id="evaluate-missing-cuda",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
    case(lambda c: c.pipeline(c.digits.tensors()[0] * 255), InputError, "x = ", "255", id="pixels-0-255-forward"),
    case(lambda c: attack_batches(c.pipeline, pgd(0.1, steps=1), c.digits.tensors()[0] * 255, c.digits.labels,
                                  n_classes=10, seed=0), InputError, "images", "255", id="pixels-0-255-attack"),
    case(_nan_attack, AttackOutputError, "attack = 'PGD-1'", "non-finite", id="attack-returns-nan"),
    case(lambda c: Pipeline(None, c.pipeline.foundation, LinearHead(7, 10)), InputError, "head", "7 features", "32",
         id="pipeline-head-width"),
    case(lambda c: Pipeline(None, "embedded", LinearHead(32, 10)), InputError, "foundation = 'embedded'",
         "load_foundation", id="pipeline-foundation-string"),
    # Model folders and hub ids.
    case(lambda c: load_foundation("./no/such/folder"), InputError, "'./no/such/folder'", "no such folder",
         "embedded", id="foundation-missing-folder"),
    case(_hub_offline, InputError, "'facebook/vit-mae-base'", "embedded", "save_pretrained",
         id="foundation-hub-id-offline"),
    case(lambda c: FoundationModel.from_pretrained(c.tmp), InputError, str(Path("/")), "not a loadable checkpoint",
         id="foundation-folder-without-model"),
    case(lambda c: load_foundation("embedded", pooling="max"), InputError, "pooling = 'max'",
         id="foundation-pooling-before-pretraining"),
    # Results files.
    case(lambda c: append_records(c.tmp / "r.jsonl", {"a": 1}), InputError, "records = {'a': 1}",
         id="append-one-dict"),
    case(lambda c: append_records(c.tmp / "r.jsonl", ["a"]), InputError, "records[0] = 'a'",
         id="append-non-dict"),
]


@pytest.mark.parametrize("make, error, names", CASES)
def test_bad_input_is_refused_naming_parameter_value_and_fix(ctx, make, error, names):
    with pytest.raises(error) as caught:
        make(ctx)
    message = str(caught.value)
    for name in names:
        assert name in message, f"{name!r} missing from: {message}"
    assert "; " in message, f"no 'what to do' part: {message}"  # "<parameter> = <value>: <problem>; <fix>"


# ----------------------------------------------------------------------------------------------------------------
# The command line: one line on stderr, exit status 2, no traceback (--debug or CROPKIT_DEBUG=1 shows it).

@pytest.fixture
def no_notebook_runs(monkeypatch):
    """Fail loudly if a CLI test gets as far as executing a notebook."""
    import papermill

    def refuse(*args, **kwargs):
        raise AssertionError("a notebook was about to run: the input was not refused first")

    monkeypatch.setattr(papermill, "execute_notebook", refuse)
    monkeypatch.delenv("CROPKIT_DEBUG", raising=False)


def _cli(capsys, *argv: str) -> tuple[int, str]:
    from cropkit.__main__ import main

    try:
        status = main(list(argv))
    except SystemExit as exit:  # argparse's own errors
        status = exit.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize("argv, names", [
    (["reproduce", "--only", ""], ["only = ''", "00,02"]),
    (["reproduce", "--only", ","], ["only = ','"]),
    (["reproduce", "--only", "00", "-p", "eps=abc"], ["eps = 'abc'", "00_quickstart", "a number"]),
    (["reproduce", "--only", "00", "-p", "n_eval=100.5"], ["n_eval = 100.5", "a whole number"]),
    (["reproduce", "--only", "00", "-p", "eps_grid=[0, 0.1"], ["-p eps_grid = '[0, 0.1'", "YAML"]),
    (["pretrain-fm", "--epochs", "0"], ["MAEConfig.epochs = 0"]),
    (["pretrain-fm", "--epochs", "2.5"], ["--epochs", "'2.5'"]),
], ids=["only-empty", "only-commas", "p-eps-not-a-number", "p-fractional-count", "p-malformed-yaml",
        "pretrain-epochs-0", "argparse-type"])
def test_cli_errors_are_one_line_with_status_2(capsys, no_notebook_runs, argv, names):
    status, err = _cli(capsys, *argv)
    assert status == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for name in names:
        assert name in err, f"{name!r} missing from: {err}"


def test_cli_unexpected_errors_are_one_line_and_debug_shows_the_traceback(capsys, monkeypatch):
    import cropkit.foundation.pretrain

    def crash(*args, **kwargs):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(cropkit.foundation.pretrain, "pretrain_mae", crash)
    monkeypatch.delenv("CROPKIT_DEBUG", raising=False)
    status, err = _cli(capsys, "pretrain-fm", "--epochs", "1")
    assert status == 2 and err.strip() == ("cropkit pretrain-fm: error: RuntimeError: disk on fire second line "
                                           "(--debug shows the traceback)")
    with pytest.raises(RuntimeError, match="disk on fire"):
        _cli(capsys, "--debug", "pretrain-fm", "--epochs", "1")
    monkeypatch.setenv("CROPKIT_DEBUG", "1")
    with pytest.raises(RuntimeError, match="disk on fire"):
        _cli(capsys, "pretrain-fm", "--epochs", "1")


def test_cli_process_prints_no_traceback():
    done = subprocess.run([sys.executable, "-m", "cropkit", "pretrain-fm", "--epochs", "-3"], cwd=project_root(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [
        "cropkit pretrain-fm: error: MAEConfig.epochs = -3: must be >= 1 (0 epochs would cache the untrained model "
        "and return it as trained); pass a whole number >= 1 (--debug shows the traceback)"]


def test_fractions_on_the_command_line_are_numbers():
    from cropkit.runs.profiles import parse_overrides, plan

    assert parse_overrides(["eps=8/255", "eps_grid=[0, 2/255]"]) == {"eps": 8 / 255, "eps_grid": [0, 2 / 255]}
    (run,) = plan("quick", only=["00"], overrides=parse_overrides(["eps=8/255"]))
    assert run.parameters["eps"] == pytest.approx(0.0313725, abs=1e-7)


# ----------------------------------------------------------------------------------------------------------------
# Faults: what the kit wrote earlier is damaged; every good record and model survives.

GOOD = [{"model": "A", "robust_accuracy": 0.5}, {"model": "B", "robust_accuracy": 0.25}]


def _good_lines() -> bytes:
    return b"".join(json.dumps(r, sort_keys=True).encode() + b"\n" for r in GOOD)


def test_torn_results_file_keeps_every_record_and_the_torn_bytes(tmp_path):
    path = tmp_path / "records.jsonl"
    torn = b'{"model": "C", "robust_acc'  # a run killed mid-write, or a disk that filled
    path.write_bytes(_good_lines() + torn)
    with pytest.warns(RecordsWarning, match="line 3"):
        assert load_records(path) == GOOD
    with pytest.warns(RecordsWarning, match=r"line 3 .*moved to .*records\.jsonl\.rejected"):
        append_records(path, [{"model": "D", "robust_accuracy": 0.0}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the file is whole again: no warning
        assert [r["model"] for r in load_records(path)] == ["A", "B", "D"]
    kept = [json.loads(line) for line in rejected_path(path).read_text().splitlines()]
    assert [(k["file"], k["line"]) for k in kept] == [("records.jsonl", 3)]
    assert kept[0]["text"].encode("utf-8", "surrogateescape") == torn  # not lost: byte for byte


def test_garbage_lines_anywhere_are_skipped_and_named(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_bytes(b'{"model": "A", "robust_accuracy": 0.5}{"model": "glued"}\n' + _good_lines()
                     + b"\x00\x00\xff\xfe\n[1, 2]\n")
    with pytest.warns(RecordsWarning, match=r"3 line\(s\).*line 1 .*line 4 .*line 5"):
        assert load_records(path) == GOOD
    with pytest.warns(RecordsWarning, match="moved to"):
        append_records(path, [{"model": "E"}])
    rejected = [json.loads(line) for line in rejected_path(path).read_text().splitlines()]
    assert [r["line"] for r in rejected] == [1, 4, 5]
    assert rejected[1]["text"].encode("utf-8", "surrogateescape") == b"\x00\x00\xff\xfe"
    assert [r["model"] for r in load_records(path)] == ["A", "B", "E"]


def test_a_complete_last_record_without_newline_is_not_glued(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_bytes(_good_lines().rstrip(b"\n"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        append_records(path, [{"model": "F"}])
        assert [r["model"] for r in load_records(path)] == ["A", "B", "F"]


def test_records_of_a_failed_notebook_run_are_recognisable(tmp_path, monkeypatch):
    """`cropkit reproduce` exports a run id to the notebook's kernel and logs its status beside the records."""
    import papermill
    from jupyter_client.kernelspec import KernelSpecManager

    from cropkit.runs.reproduce import reproduce

    def notebook_that_fails_halfway(source, output, parameters, **kwargs):
        records = Path(parameters["results_dir"]) / "records.jsonl"
        append_records(records, [{"model": "half", **results_module.provenance("cpu")}])
        assert "run_status" not in load_records(records)[-1]  # a notebook reading its own records: not failed
        raise papermill.PapermillExecutionError(3, 4, "x = 1", "ValueError", "boom", [])

    monkeypatch.setattr(papermill, "execute_notebook", notebook_that_fails_halfway)
    monkeypatch.setattr(KernelSpecManager, "get_kernel_spec", lambda self, name: None)
    out = tmp_path / "out"
    results_dir = out / "results" / "quick"
    append_records(results_dir / "records.jsonl", [{"model": "interactive"}])  # no run: never marked
    runs = reproduce("quick", only=["00"], out=out)
    assert [r.status for r in runs] == ["FAILED"]
    log = [json.loads(line) for line in (results_dir / "runs.jsonl").read_text().splitlines()]
    assert [e["status"] for e in log] == ["running", "failed"] and log[1]["notebook"] == "00_quickstart"
    assert log[0]["run_id"] == log[1]["run_id"] and "ValueError: boom" in log[1]["error"]
    marked = load_records(results_dir / "records.jsonl")
    assert [(r["model"], r.get("run_status")) for r in marked] == [("interactive", None), ("half", "failed")]
    assert marked[1]["run_id"] == log[0]["run_id"]
    assert [r["model"] for r in load_records(results_dir / "records.jsonl", failed_runs="drop")] == ["interactive"]
    assert "CROPKIT_RUN_ID" not in __import__("os").environ


TINY_AE = PreprocessorConfig(dataset="digits", width=4, latent_channels=8, epochs=2, batch_size=32)


@pytest.fixture
def few_digits(monkeypatch):
    """Pre-processor training reads 64 images per split (seconds, not minutes, on a loaded 2-core CPU)."""
    import cropkit.cropd.train

    real = cropkit.cropd.train.load_dataset
    monkeypatch.setattr(cropkit.cropd.train, "load_dataset", lambda *args, **kwargs: real(*args, **kwargs).take(64))


def test_truncated_cached_model_names_the_file_and_force_recovers(tmp_path, monkeypatch, few_digits):
    monkeypatch.setenv("CROPKIT_CACHE", str(tmp_path))
    config = replace(TINY_AE, epochs=1)
    trained = train_preprocessor(config, progress=False)
    weights = trained.path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a full disk, an interrupted copy
    with pytest.raises(CorruptFileError) as caught:
        train_preprocessor(config, progress=False)
    assert str(weights) in str(caught.value) and "force=True" in str(caught.value)
    again = train_preprocessor(config, progress=False, force=True)
    assert all(torch.equal(a, b) for a, b in zip(trained.model.state_dict().values(),
                                                 again.model.state_dict().values()))


def test_truncated_saved_config_names_the_file(tmp_path):
    save_weights(LinearHead(4, 3), tmp_path / "head", {"num_classes": 3})
    (tmp_path / "head" / "config.json").write_text('{"num_cla')
    from cropkit.core.checkpoint import load_weights

    with pytest.raises(CorruptFileError, match=r"config\.json.*delete the folder"):
        load_weights(LinearHead(4, 3), tmp_path / "head")


def test_damaged_foundation_cache_names_the_folder_and_the_rebuild(tmp_path, tiny_config):
    from transformers import ViTImageProcessor

    from cropkit.foundation.pretrain import build_mae

    folder = tmp_path / "fm"
    build_mae(tiny_config, num_channels=1).save_pretrained(folder)
    ViTImageProcessor(image_mean=[0.5], image_std=[0.5]).save_pretrained(folder)
    FoundationModel.from_pretrained(folder)  # whole, it loads
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:64])
    with pytest.raises(InputError) as caught:
        FoundationModel.from_pretrained(folder)
    assert str(folder) in str(caught.value) and "pretrain-fm --force" in str(caught.value)


# Interrupted training resumes bit-identically: tests/test_cropd.py (pre-processors), tests/test_foundation.py
# (MAE pre-training) and tests/test_finetune.py (robust fine-tuning) hold that guard.


@pytest.mark.parametrize("damaged", ["state.pt", "trainer.json", "model.safetensors"])
def test_damaged_checkpoint_of_an_interrupted_run_names_the_file(tmp_path, monkeypatch, damaged, few_digits,
                                                                 interrupted_after_first_checkpoint):
    monkeypatch.setenv("CROPKIT_CACHE", str(tmp_path))
    config = replace(TINY_AE, epochs=1)  # killed right after its checkpoint: nothing left but to load it
    with interrupted_after_first_checkpoint():
        train_preprocessor(config, progress=False)
    (partial,) = tmp_path.glob("preprocessors/*.partial")
    (partial / damaged).write_bytes((partial / damaged).read_bytes()[:20])
    with pytest.raises(CorruptFileError) as caught:
        train_preprocessor(config, progress=False)
    assert str(partial / damaged) in str(caught.value) and "force=True" in str(caught.value)
    assert len(train_preprocessor(config, progress=False, force=True).history) == 1


def test_rewritten_dataset_file_is_not_served_from_the_old_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CROPKIT_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    write_npz(path, x=rng.integers(0, 256, (64, 28, 28, 1), dtype=np.uint8), classes=("a", "b"))
    config = replace(TINY_AE, dataset=str(path), epochs=1, batch_size=32)
    first = train_preprocessor(config, progress=False)
    write_npz(path, x=255 - rng.integers(0, 256, (64, 28, 28, 1), dtype=np.uint8), classes=("a", "b"))
    second = train_preprocessor(config, progress=False)
    assert second.path != first.path
    assert not all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(),
                                                     second.model.state_dict().values()))


def test_check_adversarial_accepts_a_valid_attack_and_refuses_each_fault():
    x = torch.rand(4, 1, 8, 8)
    check_adversarial((x + 0.05).clamp(0, 1), x, 0.1, "PGD")
    for bad, problem in [(x + 0.2, "distance"), ((x - 0.05).clamp(min=-0.01), "values in"),
                         (x.clone().fill_(math.inf), "non-finite"), (x[:2], "shape")]:
        with pytest.raises(AttackOutputError, match=problem):
            check_adversarial(bad, x, 0.1, "PGD")

"""A trained pre-processor (`TrainedPreprocessor`: model, config, history, snapshots) and how it travels:
`save_pretrained(trained, folder, ...)`, `push_to_hub(trained, repo_id, ...)` and `from_pretrained(folder or hub id)`.

A folder holds `model.safetensors` (the weights), `config.json` (the training config and history, the input the
auto-encoder was built for, and the foundation model it was trained for: the spec that loads it, name, parameter
count and a digest of its weights), `records.jsonl` (the evaluation records measured with it) and `README.md`, a
Hugging Face model card (`huggingface_hub.ModelCard`: license, library, base model, and a model index of the
records' clean and robust accuracies) that shows the same to people, the way RobustBench ships a model with its
evaluation. A CRoPD pre-processor is trained for one foundation model (its robustness is measured through that
model): `from_pretrained` loads that model from the card unless one is given, and refuses another unless the
caller says `allow_other_foundation=True`.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors.torch import load_model, save_model
from torch import nn

from cropkit import __version__
from cropkit.core.checkpoint import atomic_directory, load_snapshot, module_digest, read_json, write_json
from cropkit.core.validate import require
from cropkit.cropd.autoencoders import build_autoencoder
from cropkit.cropd.config import PreprocessorConfig
from cropkit.foundation.pretrain import load_foundation

FORMAT = "cropkit-preprocessor/1"
LICENSE = "mit"  # the kit's; a card says it for the weights the kit trained
FROM_CARD = "card"  # from_pretrained's default foundation: the model the card names
HISTORY_COLUMNS = ("epoch", "train_recon", "train_l_con", "test_psnr", "test_l_con", "test_l_con_increase", "seconds",
                   "flops")
RECORD_COLUMNS = ("model", "dataset", "n_examples", "attack", "eps", "clean_accuracy", "robust_accuracy")


@dataclass
class TrainedPreprocessor:
    """A pre-processor with its training config and history; `foundation` is the model loaded for it from its card
    (`from_pretrained`), None otherwise."""

    model: nn.Module
    config: PreprocessorConfig
    history: list[dict[str, float]]
    path: Path
    foundation: nn.Module | None = None

    def save_pretrained(self, folder: str | Path, *, foundation: nn.Module,
                        records: Sequence[Mapping[str, Any]] = ()) -> Path:
        """Save with a model card naming `foundation` and the `records` measured with it (`save_pretrained`)."""
        return save_pretrained(self, folder, foundation=foundation, records=records)

    def push_to_hub(self, repo_id: str, *, foundation: nn.Module, records: Sequence[Mapping[str, Any]] = (),
                    **hub: Any) -> str:
        """Save as `save_pretrained` does and upload to the Hugging Face hub (`push_to_hub`)."""
        return push_to_hub(self, repo_id, foundation=foundation, records=records, **hub)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, foundation: nn.Module | str | None = FROM_CARD,
                        allow_other_foundation: bool = False) -> TrainedPreprocessor:
        """Load a saved pre-processor (folder or hub id) for `foundation` (`from_pretrained`)."""
        return from_pretrained(name_or_path, foundation=foundation, allow_other_foundation=allow_other_foundation)

    def at_epoch(self, epoch: int) -> nn.Module:
        """The pre-processor as it was after `epoch` epochs of this run (its cost: `self.history[:epoch]`)."""
        earlier = copy.deepcopy(self.model)
        load_snapshot(earlier, self.path, epoch)
        return earlier


class FoundationMismatchError(ValueError):
    """A pre-processor put in front of another foundation model than the one it was trained for."""


def foundation_identity(foundation: nn.Module) -> dict[str, Any]:
    """What names a foundation model in a card: the spec that loads it (`load_foundation`'s, when it was loaded so),
    its name, parameter count and a digest of its weights."""
    return {"spec": getattr(foundation, "spec", None),
            "name": str(getattr(foundation, "name", type(foundation).__name__)),
            "parameters": sum(p.numel() for p in foundation.parameters()),
            "weights_digest": module_digest(foundation),
            "pooling": getattr(foundation, "pooling", None)}


def save_pretrained(trained: TrainedPreprocessor, folder: str | os.PathLike[str], *, foundation: nn.Module,
                    records: Sequence[Mapping[str, Any]] = ()) -> Path:
    """Write `trained` with its model card to `folder` (replaced whole, atomically); return the folder.

    `foundation` is the foundation model the pre-processor is meant to sit in front of, and `records` the
    `evaluate` records measured with it there.
    """
    model = trained.model
    card = {
        "format": FORMAT,
        "cropkit_version": __version__,
        "preprocessor": asdict(trained.config),
        "input": {"channels": int(model.channels), "image_size": getattr(model, "image_size", None)},
        "foundation": foundation_identity(foundation),
        "history": trained.history,
    }
    out = Path(folder).expanduser()
    with atomic_directory(out) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        write_json(tmp / "config.json", card)
        (tmp / "records.jsonl").write_text("".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in records))
        (tmp / "README.md").write_text(model_card(card, records))
    return out


def _resolve(name_or_path: str | os.PathLike[str], revision: str | None) -> Path:
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        return local
    if str(name_or_path).count("/") != 1 or local.is_absolute():
        raise FileNotFoundError(f"No pre-processor folder at {local}, and {str(name_or_path)!r} is not a hub id "
                                "(owner/name)")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id=str(name_or_path), revision=revision))


def push_to_hub(trained: TrainedPreprocessor, repo_id: str, *, foundation: nn.Module,
                records: Sequence[Mapping[str, Any]] = (), token: str | None = None, private: bool | None = None,
                commit_message: str = "Upload a cropkit pre-processor") -> str:
    """Save `trained` as `save_pretrained` does into a temporary folder and upload it to the hub repository
    `repo_id` (created if missing); return the commit's URL."""
    import tempfile

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as scratch:
        folder = save_pretrained(trained, Path(scratch) / "preprocessor", foundation=foundation, records=records)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return str(api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message))


def from_pretrained(name_or_path: str | os.PathLike[str], *, foundation: nn.Module | str | None = FROM_CARD,
                    allow_other_foundation: bool = False, revision: str | None = None) -> TrainedPreprocessor:
    """Load a pre-processor saved by `save_pretrained` from a folder or a Hugging Face hub id, frozen.

    `foundation` is the model it will sit in front of: by default ("card") the one its card names, loaded with
    `load_foundation` and returned as the result's `foundation`; a model whose weights differ from those the card
    names is refused (`FoundationMismatchError`) unless `allow_other_foundation`; `foundation=None` loads the
    pre-processor alone.
    """
    folder = _resolve(name_or_path, revision)
    card = read_json(folder / "config.json")
    if card.get("format") != FORMAT:
        raise ValueError(f"{folder} does not hold a cropkit pre-processor (format {card.get('format')!r}, "
                         f"expected {FORMAT!r}); save one with cropkit.cropd.pretrained.save_pretrained")
    trained_for = card["foundation"]
    loaded = None
    if isinstance(foundation, str):
        require(foundation == FROM_CARD, "foundation", foundation, "not a model, None or 'card'",
                "pass the foundation model, None (the pre-processor alone) or 'card' (the model its card names)")
        require(bool(trained_for.get("spec")), "foundation", foundation, f"the card in {folder} names no loadable "
                f"foundation model (only {trained_for['name']!r})", "load that model yourself and pass it")
        foundation = loaded = load_foundation(trained_for["spec"], pooling=trained_for.get("pooling") or "mean")
    if foundation is not None and not allow_other_foundation:
        given = foundation_identity(foundation)
        if given["weights_digest"] != trained_for["weights_digest"]:
            raise FoundationMismatchError(
                f"The pre-processor in {folder} was trained for the foundation model {trained_for['name']!r} "
                f"({trained_for['parameters']:,} parameters, weights digest {trained_for['weights_digest']}), but "
                f"the one given is {given['name']!r} ({given['parameters']:,} parameters, digest "
                f"{given['weights_digest']}). Its recorded robustness does not carry over to another model; pass "
                "allow_other_foundation=True to use it anyway, and evaluate the new pipeline.")
    config = PreprocessorConfig(**card["preprocessor"])
    shape = card["input"]
    model = build_autoencoder(config.architecture, shape["channels"], shape["image_size"], config.width,
                              config.latent_channels, config.seed, depth=config.depth)
    load_model(model, str(folder / "model.safetensors"))
    return TrainedPreprocessor(model.requires_grad_(False).eval(), config, card["history"], folder, loaded)


def load_records(name_or_path: str | os.PathLike[str], revision: str | None = None) -> list[dict[str, Any]]:
    """The evaluation records shipped with a saved pre-processor."""
    text = (_resolve(name_or_path, revision) / "records.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    present = [c for c in columns if any(c in r for r in rows)]
    if not rows or not present:
        return "(none)\n"

    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(present) + " |", "|" + " --- |" * len(present)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in present) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _eval_results(records: Sequence[Mapping[str, Any]]) -> list[EvalResult]:
    """The model index of a card: each record's clean and robust accuracy (percent), named by attack and radius."""
    results = []
    for r in records:
        if not all(k in r for k in ("dataset", "attack", "eps", "clean_accuracy", "robust_accuracy")):
            continue
        robust = f"robust accuracy, {r['attack']} at {r.get('threat_model', 'Linf')} eps {r['eps']:.4g}"
        for name, field in (("clean accuracy", "clean_accuracy"), (robust, "robust_accuracy")):
            results.append(EvalResult(task_type="image-classification", dataset_type=str(r["dataset"]),
                                      dataset_name=str(r["dataset"]), dataset_split=r.get("split"),
                                      metric_type="accuracy", metric_name=name,
                                      metric_value=round(100 * float(r[field]), 2)))
    return results


def model_card(card: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> str:
    """The README.md of a saved pre-processor, a Hugging Face model card: metadata (license, library, tags, base
    model, model index of the records), what it is for, its config, history and records."""
    config, fm = PreprocessorConfig(**card["preprocessor"]), card["foundation"]
    hub_like = fm["name"].count("/") == 1 and not Path(fm["name"]).exists()
    results = _eval_results(records)
    data = ModelCardData(license=LICENSE, library_name="cropkit", tags=["adversarial-robustness", "cropd",
                                                                         "pre-processor"],
                         base_model=fm["name"] if hub_like else None, model_name=f"{config.name} for {fm['name']}",
                         eval_results=results or None)
    settings = "\n".join(f"| {k} | {v} |" for k, v in card["preprocessor"].items())
    loads = f'foundation="{fm["spec"]}" is loaded from this card' if fm.get("spec") else "pass foundation="
    body = "\n".join([f"# {config.name} pre-processor for {fm['name']}", "",
        f"A `{config.architecture}` auto-encoder trained by cropkit {card['cropkit_version']} on {config.dataset} "
        f"(eps {config.eps:.4g}, L-inf) to sit in front of the frozen foundation model `{fm['name']}` "
        f"({fm['parameters']:,} parameters, weights digest `{fm['weights_digest']}`, {fm['pooling']} pooling). "
        "Loading it in front of another foundation model is refused unless asked for: its robustness was "
        "measured through this one.", "",
        "```python", "from cropkit.cropd.pretrained import from_pretrained",
        f"trained = from_pretrained(\"<this folder or hub id>\")  # {loads}",
        "preprocessor, foundation_model = trained.model, trained.foundation", "```", "",
        "## Training config", "", "| field | value |", "| --- | --- |", settings, "",
        "## Training history", "", _table(card["history"], HISTORY_COLUMNS),
        "## Evaluation records (`records.jsonl` holds them in full)", "", _table(records, RECORD_COLUMNS)])
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))

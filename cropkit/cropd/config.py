"""What one pre-processor training run is: `PreprocessorConfig` (kind, architecture, lambda, radius, schedule,
seed), and the recipe version that keys its cache with it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from cropkit.core.validate import (
    UNTRAINED,
    boolean,
    check_fields,
    choice,
    integer,
    non_negative,
    optional,
    positive,
    radius,
    require,
    text,
)
from cropkit.cropd.autoencoders import ARCHITECTURES, Architecture

PreprocessorKind = Literal["cropd", "recon", "adv-recon"]
KINDS = ("cropd", "recon", "adv-recon")
# Bump when a code change alters what training produces for the same config (it keys the cache); 2: costs in
# the history; 3: L_con monitored at the kit's one measuring batch size, with its increase over the clean value;
# 4: the weights after every epoch are kept (`TrainedPreprocessor.at_epoch`). Not bumped for the monitored latent
# similarity, which changes no weight: `warn_if_collapsed` measures it for histories without it.
RECIPE_VERSION = 4
# Fields added after cached pre-processors existed (`PreprocessorConfig.fields`).
_KEYED_WHEN_SET = ("depth", "per_class")

@dataclass(frozen=True)
class PreprocessorConfig:
    """One pre-processor training run. `eps` is the FGSM radius for training views and for the monitored L_con."""

    kind: PreprocessorKind = "cropd"
    dataset: str = "mnist5k"
    architecture: Architecture = "conv"
    width: int = 16
    latent_channels: int = 64
    lam: float = 1.0
    eps: float = 0.1
    tau: float = 0.5
    label_free: bool = False
    depth: int | None = None  # the ViT auto-encoder's encoder layers (None: its default); conv: None
    per_class: int | None = None  # train on this many examples of each class (`ImageData.balanced`); None: all
    epochs: int = 8
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, kind=choice(KINDS, "pre-processor kind"), dataset=text,
                     architecture=choice(ARCHITECTURES, "pre-processor architecture"), width=integer(1),
                     latent_channels=integer(1), lam=non_negative, eps=radius, tau=positive, label_free=boolean,
                     depth=optional(integer(1)), per_class=optional(integer(1)),
                     epochs=integer(1, why=UNTRAINED), batch_size=integer(1), lr=positive, weight_decay=non_negative,
                     seed=integer(0))
        require((self.kind == "cropd") == (self.lam > 0), "PreprocessorConfig.lam", self.lam,
                f"kind {self.kind!r} with this lam: CRoPD needs lam > 0, the baselines lam = 0",
                "use PreprocessorConfig.for_lambda(lam), which picks the kind")
        require(self.depth is None or self.architecture == "vit", "PreprocessorConfig.depth", self.depth,
                f"a depth (encoder layers) is for the 'vit' auto-encoder, not {self.architecture!r}",
                "size the conv auto-encoder with width, or leave depth at None")

    @classmethod
    def for_lambda(cls, lam: float, **fields: Any) -> PreprocessorConfig:
        """CRoPD at `lam`, or the reconstruction-only auto-encoder when `lam` is 0 (the lambda-ablation axis)."""
        return cls(kind="cropd" if lam > 0 else "recon", lam=lam, **fields)

    def fields(self) -> dict[str, Any]:
        """The config as the cache key and the training checkpoints see it: every field, except that the fields
        added after cached pre-processors existed (`_KEYED_WHEN_SET`) appear only when set, so the configs that
        leave them at None keep their keys, trained models and resumable checkpoints."""
        return {k: v for k, v in asdict(self).items() if not (k in _KEYED_WHEN_SET and v is None)}

    @property
    def name(self) -> str:
        """Readable label: 'CRoPD (lambda=1)', 'Recon AE', 'Adv-denoising AE'."""
        return {"cropd": f"CRoPD (lambda={self.lam:g})", "recon": "Recon AE", "adv-recon": "Adv-denoising AE"}[self.kind]

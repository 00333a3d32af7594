"""Why the small ViT auto-encoder is not robust under CRoPD when the conv one is (notebook 09's open problem).

    python investigations/vit_autoencoder.py [--architectures conv vit ...] [--epochs 2 8] [--n 200]
                                             [--out investigations/vit_autoencoder.json]

For the conv (width 16) and the ViT (hidden 48, the kit's default depth) pre-processors trained with CRoPD at
lambda 1, eps 0.1 on MNIST-5k (cached like the notebooks' models), each with its SLF head on the embedded
foundation model, on `--n` test images: robust accuracy under PGD-10 through the whole pipeline (Wilson interval);
how much of the attack's perturbation each auto-encoder passes on (L2 norm of the change of its output over that
of its input); how far the attack moves the pooled latent that L_con constrains (cosine between clean and attacked
latents); how far it moves the pooled latent and the unpooled encoder output the decoder reads (the conv map's
positions, the ViT's patch tokens), each relative to how far apart different images are there (`shift`: mean
distance clean-attacked over mean distance to the batch mean, per position; a ViT token's position embedding
cancels in both); the same shift of the foundation model's pooled features, which the head reads; and how alike
different images' latents are (`cropkit.cropd.bound.latent_similarity`).

To say which half sends the perturbation where the foundation model reads it, `--architectures` also takes the two
halves swapped (`vit-enc+conv-dec`, `conv-enc+vit-dec`): on MNIST's 28x28 both encoders give a 7x7 grid of
48-dimensional vectors (the ViT's 4x4 patches; the conv map's positions, its halves here built with 48 latent
channels where the kit's conv auto-encoder has 64), so either decoder reads either encoder. `vit-token-lcon` is
the `vit` auto-encoder with L_con on all its patch tokens at once (its `latent` is the tokens concatenated) instead
of their mean. These variants are not kit architectures: the script trains them with `train_preprocessor`'s own
loop (`build_autoencoder` swapped in) under a scratch cache, as their configs name them like the originals.
Each variant is compared with both originals at the same epochs by the paired test on the same images
(`cropkit.eval.stats.compare` on the per-example PGD-10 outcomes, which the JSON keeps).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cropkit.cropd import train as train_module
from cropkit.cropd.autoencoders import ConvAutoEncoder, ViTAutoEncoder
from cropkit.cropd.bound import latent_similarity
from cropkit.cropd.config import PreprocessorConfig
from cropkit.cropd.train import psnr, train_preprocessor
from cropkit.data import load_dataset
from cropkit.eval.attacks import pgd
from cropkit.eval.protocols import fit_slf
from cropkit.eval.records import encode_outcomes, provenance
from cropkit.eval.stats import compare, format_accuracy, wilson_interval
from cropkit.foundation.pretrain import load_foundation

EPS = 0.1
SWAPPED = ("vit-enc+conv-dec", "conv-enc+vit-dec")
VARIANTS = (*SWAPPED, "vit-token-lcon")  # built here, not by the kit
LATENT = 48  # the `vit` auto-encoder's hidden size at width 16; the swapped halves meet at it


class SwappedHalves(nn.Module):
    """One family's encoder with the other's decoder, meeting on the 7x7 grid of `LATENT`-dimensional vectors.
    `encode` returns what the encoder family returns (the conv map, or the ViT's tokens with its CLS first)."""

    def __init__(self, encoder: str, channels: int, image_size: int, seed: int, pixel_mean: float) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.vit = ViTAutoEncoder(channels, image_size, hidden_size=LATENT, seed=seed, pixel_mean=pixel_mean)
        self.conv = ConvAutoEncoder(channels, width=16, latent_channels=LATENT, pixel_mean=pixel_mean)
        self.vit_encoder = encoder == "vit"
        if self.vit_encoder:  # the unused halves are dropped so that the parameter count is the hybrid's own
            del self.conv.encoder, self.vit.decoder
        else:
            del self.vit.encoder, self.conv.decoder

    def encode(self, x: Tensor) -> Tensor:
        """The encoder family's own output, which `positions` and the decoder read."""
        return self.vit.encode(x) if self.vit_encoder else self.conv.encode(x)

    def latent(self, x: Tensor) -> Tensor:
        """Pooled as the encoder's family pools it (mean over patch tokens or over map positions)."""
        encoded = self.encode(x)
        return encoded[:, 1:].mean(dim=1) if self.vit_encoder else encoded.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        """Encode with one family, decode with the other, back to [0, 1] pixels."""
        encoded = self.encode(x)
        if self.vit_encoder:  # tokens without CLS, back onto the patch grid, into the conv decoder
            side = math.isqrt(encoded.shape[1] - 1)
            return self.conv.decoder(encoded[:, 1:].transpose(1, 2).unflatten(2, (side, side)))
        tokens = encoded.flatten(2).transpose(1, 2)  # the conv map's positions as tokens, their mean as the CLS
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        restore = self.vit.order.long().expand(x.shape[0], -1)
        patches = self.vit.decoder(tokens, restore).logits
        return torch.sigmoid(self.vit.unpatchify(patches, (self.vit.image_size, self.vit.image_size)))


class TokenLatentViT(ViTAutoEncoder):
    """The `vit` auto-encoder whose `latent`, the space of L_con, is every patch token (flattened), not their mean."""

    def latent(self, x: Tensor) -> Tensor:
        """Every patch token of f_en(x), concatenated: L_con then compares whole token sets, not their mean."""
        return self.encode(x)[:, 1:].flatten(1)


@contextmanager
def variant(architecture: str) -> Iterator[str]:
    """Within the block, `train_preprocessor` builds the variant `architecture` (under the config's stand-in
    architecture name, returned) and caches it in a scratch folder, apart from the kit's models."""

    def build(_architecture: str, channels: int, image_size: int, width: int, latent_channels: int, seed: int,
              pixel_mean: float, depth: int | None) -> nn.Module:  # `build_autoencoder`'s signature
        if architecture == "vit-token-lcon":
            torch.manual_seed(seed)
            return TokenLatentViT(channels, image_size, hidden_size=LATENT, seed=seed, pixel_mean=pixel_mean)
        return SwappedHalves(architecture.split("-")[0], channels, image_size, seed, pixel_mean)

    with tempfile.TemporaryDirectory() as scratch, mock.patch.object(train_module, "build_autoencoder", build), \
            mock.patch.dict(os.environ, {"CROPKIT_CACHE": scratch}):
        yield "vit"  # a kit architecture the config accepts; `build` ignores it


def positions(ae: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The encoder output the decoder reads, one vector per position: (batch, positions, channels)."""
    encoded = ae.encode(x)
    return encoded.flatten(2).transpose(1, 2) if encoded.dim() == 4 else encoded[:, 1:]


def shift(clean: torch.Tensor, attacked: torch.Tensor) -> float:
    """How far the attack moves each position's vector, relative to how far apart different images' vectors are
    there: mean ||attacked - clean|| over mean ||clean - batch mean||, averaged over positions."""
    moved = (attacked - clean).norm(dim=-1).mean(dim=0)
    spread = (clean - clean.mean(dim=0, keepdim=True)).norm(dim=-1).mean(dim=0)
    return float((moved / spread).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architectures", nargs="+", default=["conv", "vit", *VARIANTS],
                        choices=["conv", "vit", *VARIANTS])
    parser.add_argument("--epochs", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args()
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    fm = load_foundation("embedded", pooling="mean")
    x, y = test.take(args.n, seed=0).tensors()
    rows, outcomes = [], {}
    for architecture in args.architectures:
        for epochs in args.epochs:
            with variant(architecture) if architecture in VARIANTS else nullcontext(architecture) as name:
                config = PreprocessorConfig(kind="cropd", lam=1.0, eps=EPS, architecture=name, epochs=epochs)
                ae = train_preprocessor(config, progress=False).model
            pipeline = fit_slf(ae, fm, train).eval()
            torch.manual_seed(0)
            x_adv = pgd(EPS, 10).build(pipeline, n_classes=10, seed=0)(x, y)
            with torch.inference_mode():
                held = (pipeline(x_adv).argmax(1) == y).numpy()
                robust = int(held.sum())
                out, out_adv = ae(x), ae(x_adv)
                gain = float((out_adv - out).flatten(1).norm(dim=1).mean() / (x_adv - x).flatten(1).norm(dim=1).mean())
                moved = float(F.cosine_similarity(ae.latent(x), ae.latent(x_adv)).mean())
                latent_shift = shift(ae.latent(x)[:, None], ae.latent(x_adv)[:, None])
                token_shift = shift(positions(ae, x), positions(ae, x_adv))
                feature_shift = shift(pipeline.features(x)[:, None], pipeline.features(x_adv)[:, None])
            rows.append({"architecture": architecture, "epochs": epochs, "n": len(y), "robust_pgd10": robust / len(y),
                         "robust_interval": wilson_interval(robust, len(y)), "perturbation_gain": gain,
                         "latent_cosine_clean_vs_attacked": moved, "latent_shift": latent_shift,
                         "token_shift": token_shift, "feature_shift": feature_shift,
                         "latent_similarity": latent_similarity(ae, x),
                         "test_psnr": psnr(ae, x), "parameters": sum(p.numel() for p in ae.parameters()),
                         "robust_outcomes": encode_outcomes(held)})
            outcomes[architecture, epochs] = held
            r = rows[-1]
            print(f"{architecture} {epochs} ep: PGD-10 {format_accuracy(robust / len(y), r['robust_interval'])} | "
                  f"output/input perturbation {gain:.2f} | latent cos clean-attacked {moved:.3f} | "
                  f"shift pooled {latent_shift:.3f}, per position {token_shift:.3f}, "
                  f"features {feature_shift:.3f} | latent similarity {r['latent_similarity']:.3f} | "
                  f"PSNR {r['test_psnr']:.1f} dB")
    comparisons = [compare(f"{other} ({epochs} ep)", outcomes[other, epochs], f"{original} ({epochs} ep)",
                           outcomes[original, epochs]).statement("PGD-10 accuracy")
                   for other in VARIANTS for original in ("conv", "vit") for epochs in args.epochs
                   if (other, epochs) in outcomes and (original, epochs) in outcomes]
    print(*comparisons, sep="\n")
    args.out.write_text(json.dumps({"eps": EPS, "rows": rows, "comparisons": comparisons,
                                    "provenance": provenance(torch.device("cpu"))}, indent=1) + "\n")


if __name__ == "__main__":
    main()

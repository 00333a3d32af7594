"""Why the small ViT auto-encoder is not robust under CRoPD when the conv one is (notebook 09's open problem).

    python investigations/vit_autoencoder.py [--epochs 2 8] [--n 200] [--out investigations/vit_autoencoder.json]

For the conv (width 16) and the ViT (hidden 48, the kit's default depth) pre-processors trained with CRoPD at
lambda 1, eps 0.1 on MNIST-5k (cached like the notebooks' models), each with its SLF head on the embedded
foundation model, on `--n` test images: robust accuracy under PGD-10 through the whole pipeline (Wilson interval);
how much of the attack's perturbation each auto-encoder passes on (L2 norm of the change of its output over that
of its input); how far the attack moves the pooled latent that L_con constrains (cosine between clean and attacked
latents); how far it moves the pooled latent and the unpooled encoder output the decoder reads (the conv map's
positions, the ViT's patch tokens), each relative to how far apart different images are there (`shift`: mean
distance clean-attacked over mean distance to the batch mean, per position; a ViT token's position embedding
cancels in both); the same shift of the foundation model's pooled features, which the head reads; and how alike
different images' latents are (`cropkit.theory.latent_similarity`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from cropkit.attacks import pgd
from cropkit.data import load_dataset
from cropkit.pretrain import load_foundation
from cropkit.protocols import fit_slf
from cropkit.results import provenance
from cropkit.stats import format_accuracy, wilson_interval
from cropkit.theory import latent_similarity
from cropkit.train import PreprocessorConfig, psnr, train_preprocessor

EPS = 0.1


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
    parser.add_argument("--epochs", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args()
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    fm = load_foundation("embedded", pooling="mean")
    x, y = test.take(args.n, seed=0).tensors()
    rows = []
    for architecture in ("conv", "vit"):
        for epochs in args.epochs:
            config = PreprocessorConfig(kind="cropd", lam=1.0, eps=EPS, architecture=architecture, epochs=epochs)
            ae = train_preprocessor(config, progress=False).model
            pipeline = fit_slf(ae, fm, train).eval()
            torch.manual_seed(0)
            x_adv = pgd(EPS, 10).build(pipeline, n_classes=10, seed=0)(x, y)
            with torch.inference_mode():
                robust = int((pipeline(x_adv).argmax(1) == y).sum())
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
                         "test_psnr": psnr(ae, x), "parameters": sum(p.numel() for p in ae.parameters())})
            r = rows[-1]
            print(f"{architecture} {epochs} ep: PGD-10 {format_accuracy(robust / len(y), r['robust_interval'])} | "
                  f"output/input perturbation {gain:.2f} | latent cos clean-attacked {moved:.3f} | "
                  f"shift pooled {latent_shift:.3f}, per position {token_shift:.3f}, "
                  f"features {feature_shift:.3f} | latent similarity {r['latent_similarity']:.3f} | "
                  f"PSNR {r['test_psnr']:.1f} dB")
    args.out.write_text(json.dumps({"eps": EPS, "rows": rows, "provenance": provenance(torch.device("cpu"))},
                                   indent=1) + "\n")


if __name__ == "__main__":
    main()

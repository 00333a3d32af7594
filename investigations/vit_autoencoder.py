"""Why the small ViT auto-encoder is not robust under CRoPD when the conv one is (notebook 09's open problem).

    python investigations/vit_autoencoder.py [--epochs 2 8] [--n 200] [--out investigations/vit_autoencoder.json]

For the conv (width 16) and the ViT (hidden 48, the kit's default depth) pre-processors trained with CRoPD at
lambda 1, eps 0.1 on MNIST-5k (cached like the notebooks' models), each with its SLF head on the embedded
foundation model, on `--n` test images: robust accuracy under PGD-10 through the whole pipeline (Wilson interval);
how much of the attack's perturbation each auto-encoder passes on (L2 norm of the change of its output over that
of its input); how far the attack moves the pooled latent that L_con constrains (cosine between clean and attacked
latents); and how alike different images' latents are (`cropkit.theory.latent_similarity`).
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
            rows.append({"architecture": architecture, "epochs": epochs, "n": len(y), "robust_pgd10": robust / len(y),
                         "robust_interval": wilson_interval(robust, len(y)), "perturbation_gain": gain,
                         "latent_cosine_clean_vs_attacked": moved, "latent_similarity": latent_similarity(ae, x),
                         "test_psnr": psnr(ae, x), "parameters": sum(p.numel() for p in ae.parameters())})
            r = rows[-1]
            print(f"{architecture} {epochs} ep: PGD-10 {format_accuracy(robust / len(y), r['robust_interval'])} | "
                  f"output/input perturbation {gain:.2f} | latent cos clean-attacked {moved:.3f} | "
                  f"latent similarity {r['latent_similarity']:.3f} | PSNR {r['test_psnr']:.1f} dB")
    args.out.write_text(json.dumps({"eps": EPS, "rows": rows, "provenance": provenance(torch.device("cpu"))},
                                   indent=1) + "\n")


if __name__ == "__main__":
    main()

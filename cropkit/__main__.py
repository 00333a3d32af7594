"""Command line: `python -m cropkit pretrain-fm` and `python -m cropkit reproduce --profile quick`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path


def _pretrain_fm(args: argparse.Namespace) -> int:
    from cropkit.checkpoint import read_json
    from cropkit.pretrain import PRESETS, pretrain_mae

    if args.dataset not in PRESETS:
        print(f"error: no pre-training preset for {args.dataset!r}; presets: {', '.join(sorted(PRESETS))}", file=sys.stderr)
        return 2
    config = PRESETS[args.dataset]
    if args.epochs is not None:
        config = replace(config, epochs=args.epochs)
    path = pretrain_mae(config, force=args.force)
    history = read_json(path / "cropkit_pretraining.json")["history"]
    seconds = sum(h["seconds"] for h in history)
    print(f"{path}\n{len(history)} epochs, final MAE loss {history[-1]['loss']:.4f}, {seconds:.0f}s of training")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from cropkit.reproduce import parse_overrides, reproduce, summary

    only = args.only.split(",") if args.only else None
    try:
        runs = reproduce(args.profile, only=only, overrides=parse_overrides(args.param), kernel=args.kernel,
                         out=args.out)
    except (ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n" + summary(runs))
    return 0 if runs and all(r.status == "ok" for r in runs) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cropkit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    fm = commands.add_parser("pretrain-fm", help="pre-train (or find cached) the embedded ViT-MAE foundation model")
    fm.add_argument("--dataset", default="mnist5k", help="pre-training preset (default: mnist5k)")
    fm.add_argument("--epochs", type=int, help="override the preset's number of epochs")
    fm.add_argument("--force", action="store_true", help="retrain even if a cached model exists")
    fm.set_defaults(run=_pretrain_fm)

    rp = commands.add_parser("reproduce", help="execute the numbered notebooks with papermill under a profile")
    rp.add_argument("--profile", default="quick", help="configs/<profile>.yaml (default: quick)")
    rp.add_argument("--only", help="comma-separated notebook numbers, e.g. 00,02")
    rp.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="override a notebook parameter (repeatable; values parsed as YAML)")
    rp.add_argument("--kernel", default="cropkit", help="Jupyter kernel to run the notebooks in (default: cropkit)")
    rp.add_argument("--out", type=Path, help="write results/ and figures/ under this folder (default: the project)")
    rp.set_defaults(run=_reproduce)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

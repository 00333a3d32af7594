"""Command line: `python -m cropkit pretrain-fm`, `plan --profile paper`, `download --profile paper` and
`reproduce --profile quick` (under torchrun: `torchrun --nproc_per_node 8 -m cropkit reproduce --profile paper`)."""

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


def _plan(args: argparse.Namespace) -> int:
    from cropkit.budget import calibrate, estimate
    from cropkit.reproduce import parse_overrides

    only = args.only.split(",") if args.only else None
    try:
        throughput = calibrate() if args.calibrate else None
        plan = estimate(args.profile, only=only, overrides=parse_overrides(args.param), mfu=args.mfu,
                        throughput=throughput, respect_cache=args.from_cache, measure=not args.closed_form)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(plan.table())
    return 0


def _download(args: argparse.Namespace) -> int:
    from cropkit.budget import prefetch
    from cropkit.reproduce import parse_overrides

    only = args.only.split(",") if args.only else None
    try:
        for line in prefetch(args.profile, only=only, overrides=parse_overrides(args.param)):
            print(line, flush=True)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cropkit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    fm = commands.add_parser("pretrain-fm", help="pre-train (or find cached) the embedded ViT-MAE foundation model")
    fm.add_argument("--dataset", default="mnist5k", help="pre-training preset (default: mnist5k)")
    fm.add_argument("--epochs", type=int, help="override the preset's number of epochs")
    fm.add_argument("--force", action="store_true", help="retrain even if a cached model exists")
    fm.set_defaults(run=_pretrain_fm)

    pl = commands.add_parser("plan", help="what `reproduce` with these arguments will cost: FLOPs, GPU-hours, "
                                          "peak memory and downloads per notebook run, and the total")
    pl.add_argument("--profile", default="quick", help="configs/<profile>.yaml (default: quick)")
    pl.add_argument("--only", help="comma-separated notebook numbers or NN:tag runs, e.g. 00,02:cifar10")
    pl.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="override a notebook parameter, as for reproduce")
    pl.add_argument("--mfu", type=float, default=0.35, help="model-FLOPs utilisation of the H100 (default: 0.35)")
    pl.add_argument("--calibrate", action="store_true",
                    help="hours on this machine instead: time the kit's steps here for a FLOP/s figure")
    pl.add_argument("--from-cache", action="store_true", help="leave out what the cache already holds")
    pl.add_argument("--closed-form", action="store_true",
                    help="skip counting the kit's steps (the meas/closed column; minutes on a slow CPU, then cached)")
    pl.set_defaults(run=_plan)

    dl = commands.add_parser("download", help="fetch and read every dataset and hub model a profile's runs need")
    dl.add_argument("--profile", default="quick", help="configs/<profile>.yaml (default: quick)")
    dl.add_argument("--only", help="comma-separated notebook numbers or NN:tag runs")
    dl.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="as for reproduce")
    dl.set_defaults(run=_download)

    rp = commands.add_parser("reproduce", help="execute the numbered notebooks with papermill under a profile "
                                               "(under torchrun: each process its share, on its GPU)")
    rp.add_argument("--profile", default="quick", help="configs/<profile>.yaml (default: quick)")
    rp.add_argument("--only", help="comma-separated notebook numbers or NN:tag runs, e.g. 00,02:cifar10")
    rp.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="override a notebook parameter (repeatable; values parsed as YAML)")
    rp.add_argument("--kernel", default="cropkit", help="Jupyter kernel to run the notebooks in (default: cropkit)")
    rp.add_argument("--out", type=Path, help="write results/ and figures/ under this folder (default: the project)")
    rp.set_defaults(run=_reproduce)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

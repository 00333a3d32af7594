"""Command line: `cropkit reproduce --profile quick`, `cropkit report --profile quick`, `cropkit plan --profile paper`,
`cropkit download --profile paper`, `cropkit pretrain-fm` (under torchrun: `torchrun --nproc_per_node 8 -m cropkit
reproduce --profile paper`)."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import NoReturn


def _pretrain_fm(args: argparse.Namespace) -> int:
    from cropkit.core.checkpoint import read_json
    from cropkit.core.validate import require
    from cropkit.foundation.pretrain import PRESETS, pretrain_mae
    from cropkit.runs import shipping

    require(args.dataset in PRESETS, "--dataset", args.dataset, "no pre-training preset for it",
            f"choose one of {', '.join(sorted(PRESETS))}")
    config = PRESETS[args.dataset]
    if args.epochs is not None:
        config = replace(config, epochs=args.epochs)
    if args.seed is not None:
        config = replace(config, seed=args.seed)
    require(not (args.check and (args.ship or args.epochs is not None)), "--check", True,
            "checks the preset's shipped model against a from-scratch run", "pass --check alone with --dataset/--seed")
    if args.check:
        inside, line = shipping.check(config)
        print(line)
        return 0 if inside else 1
    path = pretrain_mae(config, force=args.force)
    if args.ship:
        print(f"shipped: {shipping.ship(config)}")
    history = read_json(path / "cropkit_pretraining.json")["history"]
    seconds = sum(h["seconds"] for h in history)
    print(f"{path}\n{len(history)} epochs, final MAE loss {history[-1]['loss']:.4f}, {seconds:.0f}s of training")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from cropkit.runs.profiles import parse_overrides
    from cropkit.runs.reproduce import reproduce, slowest_cells, summary

    only = args.only.split(",") if args.only is not None else None  # --only "" is refused, not read as "all"
    runs = reproduce(args.profile, only=only, overrides=parse_overrides(args.param), kernel=args.kernel, out=args.out)
    print("\n" + summary(runs))
    print(slowest_cells(runs))
    return 0 if runs and all(r.status == "ok" for r in runs) else 1


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: 'cropkit reproduce: error: ...; see --help', exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _run(args: argparse.Namespace) -> int:
    """Run a sub-command; any error becomes one line on stderr and exit status 2 (Ctrl-C: 130), unless --debug or
    CROPKIT_DEBUG=1 asks for the traceback."""
    if args.debug or os.environ.get("CROPKIT_DEBUG", "") not in ("", "0"):
        return args.run(args)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("cropkit: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # the command line's one boundary: no traceback for the user
        from cropkit.core.validate import InputError

        kind = "" if isinstance(error, InputError) else f"{type(error).__name__}: "
        text = " ".join(str(error).split()) or "(no message)"
        print(f"cropkit {args.command}: error: {kind}{text} (--debug shows the traceback)", file=sys.stderr)
        return 2


def _report(args: argparse.Namespace) -> int:
    from cropkit.runs import check, report

    if args.update_from:
        for path in report.update_reference(args.profile, args.update_from):
            print(f"reference: {path}")
    if args.compare:
        problems = check.moved(report.load_reference(args.profile), report.load_reference(args.profile, args.compare))
        print("\n".join(problems) or f"every reference number of {args.profile!r} reproduced within its training runs' spread")
        return 1 if problems else 0
    if args.check:
        stale = report.stale(args.profile)
        print("\n".join(f"out of date: {p} (run `cropkit report --profile {args.profile}`)" for p in stale) or "up to date")
        return 1 if stale else 0
    for path in report.write(args.profile):
        print(f"wrote {path}")


def _plan(args: argparse.Namespace) -> int:
    from cropkit.runs.budget import calibrate, estimate
    from cropkit.runs.profiles import parse_overrides

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
    from cropkit.runs.budget import prefetch
    from cropkit.runs.profiles import parse_overrides

    only = args.only.split(",") if args.only else None
    try:
        for line in prefetch(args.profile, only=only, overrides=parse_overrides(args.param)):
            print(line, flush=True)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="cropkit", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks (also CROPKIT_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    fm = commands.add_parser("pretrain-fm", help="pre-train (or find cached) the embedded ViT-MAE foundation model")
    fm.add_argument("--dataset", default="mnist5k", help="pre-training preset (default: mnist5k)")
    fm.add_argument("--epochs", type=int, help="override the preset's number of epochs")
    fm.add_argument("--seed", type=int, help="the pre-training run's seed (default: the preset's, 0)")
    fm.add_argument("--force", action="store_true", help="retrain even if a cached model exists")
    fm.add_argument("--ship", action="store_true", help="also copy it into the package with its card (a maintainer's "
                                                        "step: the shipped models are committed)")
    fm.add_argument("--check", action="store_true", help="pre-train from scratch (cached) and check that its linear "
                                                         "probe lands inside the shipped card's interval")
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

    rr = commands.add_parser("report", help="render the results page and the README's results from reference records")
    rr.add_argument("--profile", default="quick", help="reference/<profile>/ (default: quick)")
    rr.add_argument("--update-from", type=Path, metavar="DIR",
                    help="first make the latest records in DIR (e.g. results/quick) the reference")
    rr.add_argument("--check", action="store_true", help="only say whether the committed text is up to date")
    rr.add_argument("--compare", type=Path, metavar="DIR",
                    help="list the reference numbers that the records in DIR do not reproduce within their intervals")
    rr.set_defaults(run=_report)

    args = parser.parse_args(argv)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())

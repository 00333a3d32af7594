"""Command line: `cropkit reproduce --profile quick`, `cropkit report --profile quick`, `cropkit pretrain-fm`."""

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


def _report(args: argparse.Namespace) -> int:
    from cropkit import report

    if args.update_from:
        for path in report.update_reference(args.profile, args.update_from):
            print(f"reference: {path}")
    if args.compare:
        problems = report.moved(report.load_reference(args.profile), report.load_reference(args.profile, args.compare))
        print("\n".join(problems) or f"every reference number of {args.profile!r} reproduced within its interval")
        return 1 if problems else 0
    if args.check:
        stale = report.stale(args.profile)
        print("\n".join(f"out of date: {p} (run `cropkit report --profile {args.profile}`)" for p in stale) or "up to date")
        return 1 if stale else 0
    for path in report.write(args.profile):
        print(f"wrote {path}")
    return 0


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

    rr = commands.add_parser("report", help="render the results page and the README's results from reference records")
    rr.add_argument("--profile", default="quick", help="reference/<profile>/ (default: quick)")
    rr.add_argument("--update-from", type=Path, metavar="DIR",
                    help="first make the latest records in DIR (e.g. results/quick) the reference")
    rr.add_argument("--check", action="store_true", help="only say whether the committed text is up to date")
    rr.add_argument("--compare", type=Path, metavar="DIR",
                    help="list the reference numbers that the records in DIR do not reproduce within their intervals")
    rr.set_defaults(run=_report)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

"""The `hwnas` command line, one module per command group. Bad input prints one line naming what was wrong and
exits with code 2. Third-party libraries' notices are kept off the output unless `hwnas -v` asks for them
(`latency_tables.quiet`); when a command fails, what they wrote follows the error."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from latency_tables.quiet import third_party_quiet
from nas.cli import arch, compress, dashboard, export, lut, predictor, report, run, search, space, supernet
from nas.cli.common import load_arch
from search_spaces import HwnasError

#: The command groups, in the order `hwnas --help` lists them.
GROUPS = (run, space, arch, supernet, lut, predictor, search, export, compress, dashboard, report)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every command group."""
    parser = argparse.ArgumentParser(prog="hwnas", description="Hardware-aware neural architecture search.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show what third-party libraries (TensorFlow, LiteRT, torchao, torch) write to stderr")
    groups = parser.add_subparsers(dest="group", required=True)
    for group in GROUPS:
        group.register(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `hwnas ARGV`; the exit status: 0, 2 on bad input, 130 when interrupted."""
    args = build_parser().parse_args(argv)
    try:
        with third_party_quiet(args.verbose):
            args.func(args)
    except KeyboardInterrupt:
        print("hwnas: interrupted; finished work is kept (a training run continues with --resume, a table "
              "build or validation continues when run again)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0
    except (HwnasError, OSError) as err:
        print(f"hwnas: error: {err}", *getattr(err, "__notes__", ()), sep="\n", file=sys.stderr)
        return 2
    return 0


__all__ = ["build_parser", "load_arch", "main"]

"""``purer`` command line: one subcommand per pipeline step, each a thin layer over the library.

Every subcommand takes ``--config FILE`` and any number of ``--set section.key=value`` overrides,
writes the resolved config next to its outputs, and exits with status 2 and one line on stderr
for bad input (never a traceback).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys

from purer import __version__
from purer.errors import PurerError
from purer.hostmem import retain_freed_memory
from purer.tracking import setup_logging

# subcommand -> module in purer.cli providing add_arguments(parser) and run(args) -> None
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("purer.cli.prepare", "decode datasets once into cached uint8 tensors per split"),
    "pool": ("purer.cli.pool", "partition classes, train teachers, write the pool manifest"),
    "meta-train": ("purer.cli.meta_train", "meta-train a model (purer/ei/random/average) from the pool"),
    "meta-test": ("purer.cli.meta_test", "evaluate a meta model on fixed episodes (optionally with ICFIL)"),
    "report": ("purer.cli.report", "gather metrics into paper-style tables and figures"),
    "status": ("purer.cli.status", "where the experiment stands: each run's progress and validation so far (no test numbers)"),
}


def plain_text(docstring: str) -> str:
    """A module docstring as terminal help: reStructuredText literals (````x````) shown as ``x``."""
    return re.sub(r"``([^`]+)``", r"\1", docstring).strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="purer",
        description="Data-free meta-learning (PURER: ECI meta-training, ICFIL meta-testing).",
    )
    parser.add_argument("--version", action="version", version=f"purer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<step>", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        step = sub.add_parser(
            name,
            help=help_text,
            description=plain_text(module.__doc__ or help_text),
            formatter_class=argparse.RawDescriptionHelpFormatter,  # keep the docstring's lines
        )
        module.add_arguments(step)
        step.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "verbose", False))
    retain_freed_memory()  # no page-fault storm from per-iteration tensors (purer/hostmem.py)
    try:
        args._run(args)
    except PurerError as exc:
        logging.getLogger("purer").debug("error details", exc_info=True)
        print(f"purer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file system fault no reader or writer turned into a PurerError
        logging.getLogger("purer").debug("error details", exc_info=True)
        print(f"purer {args.command}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"purer {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


def describe_os_error(exc: OSError) -> str:
    """``<file>: <reason>`` (both files for a rename), without Python's exception syntax."""
    files = " -> ".join(str(name) for name in (exc.filename, exc.filename2) if name is not None)
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{files}: {reason}" if files else reason


if __name__ == "__main__":
    sys.exit(main())

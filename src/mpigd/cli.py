"""`python -m mpigd [COMMAND] ...`: parse the command line, then run the chosen command.

The grammar is options.py; each command's work lives in its own module, imported only
when chosen, so that `generate` never loads mpi4py and training never loads matplotlib.
"""

import importlib
import sys

from .errors import MpigdError
from .options import COMMANDS, build_parser

# command -> (module, function) that runs it with the parsed arguments
_HANDLERS = {
    "train": ("mpigd.train_cli", "command"),
    "generate": ("mpigd.synthetic", "command"),
    "import": ("mpigd.importer", "command"),
    "predict": ("mpigd.predict", "command"),
    "solve": ("mpigd.solve_cli", "command"),
    "cluster": ("mpigd.cluster.cli", "command"),
    "scale": ("mpigd.studies.commands", "scale"),
    "scale-report": ("mpigd.studies.commands", "scale_report"),
    "plot": ("mpigd.studies.commands", "plot"),
    "bench-comm": ("mpigd.studies.commands", "bench_comm"),
    "bench": ("mpigd.studies.commands", "bench"),
    "project": ("mpigd.studies.project", "command"),
    "compare": ("mpigd.studies.compare", "command"),
}


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default sys.argv[1:]) and run the command; returns its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "train")  # `python -m mpigd --data f.h5` means train
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # point at the command's own help, which lists its options
        command = f" {args.command}" if args.command else ""
        raise MpigdError(f"unrecognized arguments: {' '.join(unknown)} "
                         f"(see `python -m mpigd{command} --help`)")
    module, function = _HANDLERS[args.command]
    return getattr(importlib.import_module(module), function)(args)

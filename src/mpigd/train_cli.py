"""The `train` subcommand: settings checked before MPI starts, then train.run, then the summary."""

from .config import build, for_resume, load_file
from .errors import MpigdError
from .console import quiet_summary, summary


def command(args) -> int:
    """The `train` subcommand: settings from file and command line (or a checkpoint), run, print."""
    options = {k: v for k, v in vars(args).items() if k not in ("command", "config", "resume")}
    config_file, resume_dir = getattr(args, "config", None), getattr(args, "resume", None)
    if resume_dir and config_file:  # before MPI starts: one message, not one per rank
        raise MpigdError("--resume takes the settings from the checkpoint; drop --config")
    if not resume_dir:
        config = build(load_file(config_file) if config_file else {}, options)

    # Only now: importing mpi4py.MPI starts MPI, and a bad option must be one message from
    # rank 0 (every rank fails alike before MPI), not one per rank and an abort.
    from mpi4py import MPI

    from . import checkpoint
    from .comm import agreed
    from .train import run

    comm = MPI.COMM_WORLD
    resume = None
    if resume_dir:
        with agreed(comm, f"reading the checkpoint in {resume_dir}"):
            resume = checkpoint.load(resume_dir)
            config = for_resume(resume.config, options)
            config.out = resume_dir
    result = run(config, comm, resume)
    if comm.rank == 0:
        print(quiet_summary(result) if config.quiet else summary(result))
        print(f"\n  data:    {result.data.path}\n  results: {result.run_dir}", flush=True)
    return 0

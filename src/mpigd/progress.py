"""Where this rank stands, for the stall watchdog: a few integers the loops write.

The loops mark their position by storing small ints into one preallocated list (a list
item store costs ~20 ns, nothing next to an iteration); the watchdog's thread reads the
list twice a second and sends it to the other ranks. Nothing here communicates or locks:
under the GIL a list item store is atomic, and a torn read cannot happen.
"""

# Stages of a run; a watchdog waits longer in the slow ones that make no iterations.
LOADING, POWER, LOOP, SAVING, FINISHING = range(5)
STAGE_NAMES = ("loading the data", "power iteration (--lr auto)", "training",
               "writing a checkpoint", "writing the results")
GENEROUS = frozenset({LOADING, SAVING, FINISHING})

# Phases inside one iteration: inside a collective (or between them), or in the map step.
WAITING, MAPPING = 0, 1
PHASE_NAMES = ("in a collective (Bcast/Barrier/Reduce)", "in its map step (computing its gradient)")

# Slots of STATE.
STAGE, STEP, PHASE, CHECKPOINT = range(4)

STATE = [LOADING, 0, WAITING, -1]  # CHECKPOINT: iteration of the last checkpoint, -1 = none


def enter(stage: int, step: int = 0) -> None:
    """A new stage begins (counts as progress for the watchdog)."""
    STATE[STAGE], STATE[STEP], STATE[PHASE] = stage, step, WAITING


def step(n: int) -> None:
    """Step n of the current stage is done (an iteration, a power-iteration pass)."""
    STATE[STEP] = n


def saved(iteration: int) -> None:
    """A checkpoint of `iteration` is on disk (rank 0 tells the others in its heartbeats)."""
    STATE[CHECKPOINT] = iteration

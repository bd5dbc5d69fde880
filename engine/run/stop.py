"""StopRun: the way a run ends early with a reason — a device that is not there, a non-finite loss, a full disk, a
batch larger than the data. The trainer records the reason as the run's error (engine.train.failures)."""


class StopRun(Exception):
    """Raised inside the loop to end it early with a reason; its message names the cause and the fix."""

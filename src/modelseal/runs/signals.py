"""Interruption: Ctrl-C and SIGTERM raise Interrupted; during a training step they are held
until the step ends (checkpoint.TrainingCheckpoint.steps), so a checkpoint holds whole steps."""
from __future__ import annotations

import signal


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM, raised by the handler install_signal_handlers installs: a KeyboardInterrupt,
    so every `except KeyboardInterrupt` (and the run folder's "interrupted" status) sees it."""

    def __init__(self, signum: int = signal.SIGINT):
        self.signum = int(signum)
        super().__init__(signal.Signals(self.signum).name)


# The signal that asked us to stop (None: none yet), and whether a training step is running:
# a signal that arrives during a step is held until the step ends, so the checkpoint saved on
# the way out holds a whole number of steps (TrainingCheckpoint.steps).
_stop: dict = {"signal": None, "defer": False}


def _on_signal(signum, frame) -> None:
    if _stop["signal"] is not None:   # already stopping: a second Ctrl-C stops at once, a second SIGTERM waits
        if signum == signal.SIGINT:
            raise Interrupted(signum)
        return
    _stop["signal"] = signum
    if not _stop["defer"]:
        raise Interrupted(signum)


def install_signal_handlers() -> dict:
    """Ctrl-C and SIGTERM raise Interrupted (SIGTERM: what schedulers and `timeout` send).
    Returns the previous handlers for restore_signal_handlers; a no-op off the main thread."""
    _stop.update(signal=None, defer=False)
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            current = signal.getsignal(sig)
            if sig == signal.SIGINT and current is signal.SIG_IGN:
                continue  # started with Ctrl-C ignored (a background job): keep it so
            previous[sig] = current
            signal.signal(sig, _on_signal)
        except (ValueError, OSError):  # not the main thread
            pass
    return previous


def restore_signal_handlers(previous: dict) -> None:
    for sig, handler in previous.items():
        try:
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        except (ValueError, OSError):
            pass
    _stop.update(signal=None, defer=False)


def stop_signal() -> int | None:
    """The signal that interrupted this command (None when none did)."""
    return _stop["signal"]


def hold_signals() -> None:
    """Hold Ctrl-C / SIGTERM until end_deferral (a training step is running)."""
    _stop["defer"] = True


def end_deferral() -> None:
    """Deliver signals at once again (a training step ended by an exception)."""
    _stop["defer"] = False

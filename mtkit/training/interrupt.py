"""Ctrl-C and SIGTERM during training: finish the update, save last.pt, exit 130 / 143."""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager

log = logging.getLogger("mtkit")


class Interrupted(Exception):
    """Training stopped by SIGINT/SIGTERM after saving last.pt; `exit_code` is 130 or 143."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each update (then it saves and exits)."""

    def __init__(self, escalate: bool = True):
        # Under a launcher (torchrun) the launcher forwards signals and owns the escalation to
        # SIGKILL, so a repeated signal must not abort a checkpoint being written.
        self.signum: int | None = None
        self.escalate = escalate

    def _handle(self, signum, frame):
        if self.signum is not None:
            if self.escalate:  # a second Ctrl-C: stop at once
                raise KeyboardInterrupt
            return
        self.signum = signum
        log.warning("%s received: finishing this update, then saving last.pt%s", signal.Signals(signum).name,
                    " (press again to abort)" if self.escalate else "")

    @contextmanager
    def installed(self):
        """Handle the signals inside the `with` block (main thread only), then restore the old handlers."""
        old = {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                old[s] = signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)

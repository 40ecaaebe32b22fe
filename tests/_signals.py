"""Children that must react to SIGINT as a terminal's Ctrl-C would make them.

A test run started in the background of a non-interactive shell (`.ci/run &`, some CI runners)
inherits SIGINT *ignored*, and Python then installs no KeyboardInterrupt handler in the children
it starts: a test that sends SIGINT would wait for nothing. ``preexec_fn=sigint_default`` gives a
child the default disposition back before it execs.
"""

from __future__ import annotations

import signal


def sigint_default() -> None:
    """Reset SIGINT to SIG_DFL in a child about to exec (use as ``preexec_fn``)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)

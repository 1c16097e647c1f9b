"""Exit codes of every ``mkgan-engine`` command (``sr``, ``doctor``, ``export``), defined once."""

from __future__ import annotations

EXIT_OK = 0  # everything succeeded (or was skipped)
EXIT_FAILED = 1  # an input, a check or an export step failed
EXIT_USAGE = 2  # bad options or files: nothing was run
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT); the report of what finished is written
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM); likewise

"""Exit codes of the project's commands, and the errors that mean "retrying cannot help".

0 is success; 1 is an unexpected error (Python's own code for an uncaught exception, with its
traceback). The DAG's Spark operator (dags/cscnn_links.py) fails a task without retries when its
stage process exits with one of NON_RETRYABLE: a bad argument or config, or bad input data (a
failed critical expectation, a landing file that breaks the contract, a window whose days all
failed their checks). The same input gives the same failure, so a retry would only delay the
alert. Any other exit code (a lost executor, a killed JVM, a timeout) keeps the task's retries.

Standard library only: the DAG files import this module while they are parsed.
"""

from __future__ import annotations

USAGE = 2  # a bad argument or config value: one line on stderr names it (core.cli.run_cli)
BAD_DATA = 3  # the stage's input data is unusable as it is: fix or replace it, then clear the task
NON_RETRYABLE: frozenset[int] = frozenset({USAGE, BAD_DATA})


class BadDataError(RuntimeError):
    """A deterministic input-data error: the stage fails the same way on every retry."""

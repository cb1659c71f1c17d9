"""Exit codes of the project's commands, shared by the stage CLIs and the DAG that runs them.

0 is success; 1 is an unexpected error (Python's own code for an uncaught exception, with its
traceback).
"""

USAGE = 2  # a bad argument or config value: one line on stderr names it (core.cli.run_cli)

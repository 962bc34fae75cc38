"""The project's one error base class. It sits at the bottom of the import graph (it
imports nothing), so every layer — data, training, the LLM side, the command lines — may
raise its subclasses."""


class UserError(Exception):
    """A problem the user can fix, reported as one ``error:`` line with exit code 2
    (runs.cli.run_cli); every such error of the project derives from it."""

"""The one exception type for problems with the user's input.

The CLI turns it into a single line on stderr and exit code 2; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad user input: a missing or malformed file, an unknown channel name, an empty class, ..."""

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)

    def __reduce__(self):  # keep problem and path apart across processes (extract --jobs)
        return (self.__class__, (self.problem, self.path))

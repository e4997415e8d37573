"""The error taxonomy: what is the operator's mistake and what is not."""

from __future__ import annotations


class ConfigError(Exception):
    """The operator's mistake in a config document: one line, naming the path into the document.

    `str(error)` is what the operator reads, e.g. `Apps[1].Targets[0]: "nocolon" is not host:port`.
    """

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


class ConfigUnreadable(ConfigError):
    """The config file itself could not be read (missing, permissions): the message names the file."""

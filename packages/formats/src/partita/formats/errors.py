"""The one error type every loader and validator raises for bad input."""

from __future__ import annotations


class FormatError(ValueError):
    """A Partita file (or an object about to become one) is not valid.

    ``str(error)`` is one line: ``<file>: <field path>: <what was expected>``, with the
    parts that are unknown left out.
    """

    def __init__(self, message: str, *, path: str = "", file: str | None = None) -> None:
        self.message = " ".join(message.split())
        self.path = path
        self.file = file
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [p for p in (self.file, self.path) if p]
        return ": ".join([*parts, self.message])

    def in_file(self, file: str) -> FormatError:
        """The same error, attributed to ``file`` (kept if already attributed)."""
        if self.file is not None:
            return self
        return FormatError(self.message, path=self.path, file=file)

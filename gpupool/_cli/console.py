"""The rich console the commands print their results with.

One difference from a plain :class:`rich.console.Console`: when the reader of
standard output goes away (``gpupool journal show J | head -3``), rich's
default is to exit with code 1 on the spot; this console raises
`BrokenPipeError` instead, so that ``gpupool._cli.main.main`` ends the command the
way it ends every closed pipe: quietly, with exit code 0.
"""

from __future__ import annotations

from typing import final

from rich.console import Console

__all__ = ["OutputConsole"]


@final
class OutputConsole(Console):
    """A :class:`~rich.console.Console` on which a closed pipe raises `BrokenPipeError`."""

    def on_broken_pipe(self) -> None:
        self.quiet = True  # nothing more can reach the reader
        raise BrokenPipeError("the reader of standard output has gone")

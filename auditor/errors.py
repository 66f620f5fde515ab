"""Errors about the user's input (rules, manifests, settings): exit code 2 at the CLI.

Every ``InputError`` names where (file, document), what (field), the problem and the fix, so a
message alone is enough to correct the input. Nothing is applied when one is raised.
"""

from __future__ import annotations


class InputError(ValueError):
    def __init__(
        self,
        source: str,
        problem: str,
        *,
        field: str = "",
        fix: str = "",
        document: int | None = None,
    ) -> None:
        self.source = source
        self.problem = problem
        self.field = field
        self.fix = fix
        self.document = document
        super().__init__(self.render())

    def render(self) -> str:
        where = self.source + (f" (document {self.document})" if self.document is not None else "")
        what = f"{self.field}: " if self.field else ""
        fix = f"\n  fix: {self.fix}" if self.fix else ""
        return f"{where}: {what}{self.problem}{fix}"

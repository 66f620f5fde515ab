"""Errors about the user's input (rules, manifests, settings): exit code 2 at the CLI.

Every ``InputError`` names where (file, document), what (field), the problem and the fix, so a
message alone is enough to correct the input. Nothing is applied when one is raised. The
rendered message shows control characters as escapes (``render.escape.visible``): file names,
fields and problems quote the hostile input itself.
"""

from __future__ import annotations

from auditor.render.escape import visible


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
        where = visible(self.source) + (f" (document {self.document})" if self.document is not None else "")
        what = f"{visible(self.field)}: " if self.field else ""
        fix = f"\n  fix: {visible(self.fix, multiline=True)}" if self.fix else ""
        return f"{where}: {what}{visible(self.problem, multiline=True)}{fix}"

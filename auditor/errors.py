"""Errors about the user's input (rules, manifests, settings): exit code 2 at the CLI.

Every ``InputError`` names where (file, document and, where the reader knows it, the line the
document starts on), what (field), the problem and the fix, so a message alone is enough to
correct the input. Nothing is applied when one is raised. The rendered message shows control
characters as escapes (``render.escape.visible``): file names, fields and problems quote the
hostile input itself.
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
        line: int | None = None,
    ) -> None:
        self.source = source
        self.problem = problem
        self.field = field
        self.fix = fix
        self.document = document
        self.line = line
        super().__init__(self.render())

    def render(self) -> str:
        where = visible(self.source) + (f" (document {self.document})" if self.document is not None else "")
        line = f" (the document starts at line {self.line})" if self.line is not None else ""
        what = f"{visible(self.field)}: " if self.field else ""
        fix = f"\n  fix: {visible(self.fix, multiline=True)}" if self.fix else ""
        return f"{where}: {what}{visible(self.problem, multiline=True)}{line}{fix}"


class InputProblemsError(InputError):
    """Several problems in the input, most useful first; behaves as the first one.

    ``render()`` shows the first and counts the rest (``auditor check``); ``render_all()`` lists
    every one (``auditor rules validate``).
    """

    def __init__(self, problems: list[InputError], *, all_hint: str = "") -> None:
        if not problems:
            raise ValueError("InputProblemsError needs at least one problem")
        self.problems = tuple(problems)
        self.all_hint = all_hint
        first = problems[0]
        super().__init__(
            first.source, first.problem, field=first.field, fix=first.fix, document=first.document, line=first.line
        )

    def render(self) -> str:
        first = self.problems[0].render()
        if len(self.problems) == 1:
            return first
        hint = f"; {self.all_hint}" if self.all_hint else ""
        return f"{first}\n  (and {len(self.problems) - 1} more problem(s){hint})"

    def render_all(self) -> str:
        return "\n".join(problem.render() for problem in self.problems)


class ClusterUnreachableError(Exception):
    """No answer at all from the API server: nothing was audited (exit 3, one line at the CLI).

    ``server`` is the URL tried, ``reason`` the root cause (``connection refused``), ``source``
    where the address came from (the kubeconfig path and context, or the in-cluster config).
    """

    def __init__(self, server: str, reason: str, source: str) -> None:
        self.server = server
        self.reason = reason
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        return (
            f"cannot reach the API server {visible(self.server)} ({visible(self.source)}): {visible(self.reason)}; "
            "nothing was audited. Check the server address in the kubeconfig, the VPN or network "
            "route to it, and that the cluster is up (kubectl cluster-info)."
        )

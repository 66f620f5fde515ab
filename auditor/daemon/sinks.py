"""Report sinks the daemon publishes every evaluated audit to.

``DirectorySink`` keeps the JSON audit documents (the archive ``auditor report`` renders) and a
rolling history for the HTML report's per-target strips. AWS sinks wrap the adapters in
``auditor.adapters.aws`` (enabled only when configured).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from auditor.core.model import Finding
from auditor.render.document import audit_document
from auditor.render.html import HistoryPoint, render_html


class DirectorySink:
    def __init__(self, directory: Path, *, keep: int = 500) -> None:
        self._directory = directory
        self._keep = keep
        directory.mkdir(parents=True, exist_ok=True)

    def publish(self, findings: Sequence[Finding], run: Mapping[str, Any]) -> None:
        document = audit_document(tuple(findings), inputs={"mode": "daemon"})
        document["run"] = dict(run)
        name = re.sub(r"[^0-9A-Za-z]+", "-", str(run["at"])).strip("-") + f"-{run['kind']}.json"
        _atomic_write(self._directory / name, json.dumps(document, sort_keys=True))
        self._prune()

    def documents(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(self._directory.glob("*.json"))]

    def render_latest_html(self) -> str:
        documents = self.documents()
        history = [HistoryPoint(str(d["run"]["at"]), d["summary"]["by_target"]) for d in documents]
        return render_html(documents[-1], history)

    def _prune(self) -> None:
        files = sorted(self._directory.glob("*.json"))
        for old in files[: max(0, len(files) - self._keep)]:
            old.unlink()


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)  # atomic on POSIX: readers never see half a report

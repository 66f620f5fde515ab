"""The lab's stand-in for the probe container image: an interpreter and a site directory.

Role: a probe pod's command is ``python -c <shim>`` running ``python -m probes`` (see
docs/probes.md). In a cluster the image supplies that Python; in the lab, the pod's process runs
on this host inside the pod's network namespace as the pod's non-root ``runAsUser``, which cannot
read a Python installed under a private home directory (pyenv in ``/root``). ``build`` therefore
assembles what the image would contain in a world-readable directory of the lab's state: the
``probes`` package and the distributions it imports (``httpx``, ``pydantic`` and their
requirements), hard-linked or copied from this interpreter's site-packages, and picks a system
interpreter of the same ``major.minor`` (compiled extensions such as ``pydantic_core`` are built
for that ABI). ``verify`` runs ``import probes.__main__`` as the pod's uid once, so a broken image
fails ``lab up`` rather than every probe.

When no such interpreter exists the image falls back to this interpreter, run as root (still
captured: only the proxy uid 1337 is exempt); ``Image.as_root`` says so and the kubelet logs it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# What `python -m probes` imports besides the standard library (probes/sender.py, probes/wire.py).
PROBE_DISTRIBUTIONS = ("httpx", "pydantic")
SYSTEM_BIN_DIRS = (Path("/usr/bin"), Path("/usr/local/bin"))
SETPRIV = "/usr/bin/setpriv"
VERIFY_TIMEOUT_S = 30


class ImageError(RuntimeError):
    """The probe image cannot be assembled; the message says what is missing."""


@dataclass(frozen=True)
class Image:
    """How a probe pod's ``python`` runs: this interpreter, with this ``PYTHONPATH``."""

    python: str
    pythonpath: str
    as_root: bool = False

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> Image:
        data = json.loads(path.read_text())
        return cls(str(data["python"]), str(data["pythonpath"]), bool(data.get("as_root")))


def system_python() -> Path | None:
    """A world-executable interpreter with this one's major.minor, outside any home directory."""
    name = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for directory in SYSTEM_BIN_DIRS:
        candidate = directory / name
        if candidate.exists() and candidate.stat().st_mode & 0o001:
            return candidate
    return None


def _distribution_closure(names: tuple[str, ...]) -> list[importlib.metadata.Distribution]:
    """The distributions and their unconditional requirements (extras skipped), installed ones only."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in found:
            continue
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # an optional requirement for another Python version
        found[key] = distribution
        for requirement in distribution.requires or []:
            spec, _, marker = requirement.partition(";")
            if "extra" not in marker:
                todo.append(re.split(r"[ <>=!~\[(;]", spec.strip(), maxsplit=1)[0])
    return list(found.values())


def _top_levels(distribution: importlib.metadata.Distribution) -> set[str]:
    tops = {str(path).split("/")[0] for path in distribution.files or [] if not str(path).startswith("..")}
    return {top for top in tops if not top.endswith((".dist-info", ".pth", ".data")) and top != "__pycache__"}


def _link_or_copy(source: str, target: str) -> None:
    # A hard link shares the source's inode: only for files the pod's uid may read already, so the
    # host's own files are never chmod-ed. Anything else is copied and made readable.
    if Path(source).stat().st_mode & 0o004:
        with contextlib.suppress(OSError):
            os.link(source, target)
            return
    shutil.copy2(source, target)
    Path(target).chmod(Path(target).stat().st_mode | 0o444)


def _install(source: Path, target: Path) -> None:
    if source.is_dir():
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(source, target, ignore=ignore, copy_function=_link_or_copy, dirs_exist_ok=True)
    elif source.exists():
        _link_or_copy(str(source), str(target))


def build(directory: Path) -> Image:
    """Assemble the image under ``directory`` (world-readable); see the module docstring."""
    python = system_python()
    if python is None:
        return Image(sys.executable, str(REPO_ROOT), as_root=True)
    site = directory / "site"
    site.mkdir(mode=0o755, parents=True, exist_ok=True)
    for distribution in _distribution_closure(PROBE_DISTRIBUTIONS):
        for top in sorted(_top_levels(distribution)):
            _install(Path(str(distribution.locate_file(top))), site / top)
    _install(REPO_ROOT / "probes", site / "probes")
    for path in [directory, *(p for p in directory.rglob("*") if p.is_dir())]:
        path.chmod(0o755)
    return Image(str(python), str(site))


def verify(image: Image, uid: int) -> None:
    """``import probes.__main__`` as ``uid`` with the image's interpreter; raise ImageError if it fails."""
    if image.as_root:
        return
    argv = [SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", image.python]
    argv += ["-c", "import probes.__main__"]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": image.pythonpath, "PYTHONNOUSERSITE": "1"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    result = subprocess.run(
        argv, env=env, cwd="/", capture_output=True, text=True, check=False, timeout=VERIFY_TIMEOUT_S
    )
    if result.returncode != 0:
        raise ImageError(f"the lab's probe image does not import probes as uid {uid}: {result.stderr[-1500:]}")

"""An API server outage for end-to-end tests: stop the kube-apiserver of a DEDICATED control plane
and start it again later on the same port, with the same flags, certificates and etcd data.

Only for a control plane this test started itself (``testrigs.devtools.controlplane.up`` in a state
dir of its own): stopping the shared session server would break every other test. The restarted
process is written back into the state dir's record, so ``controlplane.down`` stops it too.
etcd keeps running: the data (the Lease, the state ConfigMap, the objects) is the same after.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from testrigs.devtools import processes
from testrigs.devtools.processes import TrackedProcess

APISERVER = "kube-apiserver"


class ApiServerOutage:
    """``stop()`` then ``start()`` the kube-apiserver recorded in ``state_dir/state.json``."""

    def __init__(self, state_dir: Path, kubectl: Path, kubeconfig: Path) -> None:
        self._record_path = state_dir / "state.json"
        self._log_path = state_dir / "logs" / f"{APISERVER}.log"
        self._kubectl, self._kubeconfig = kubectl, kubeconfig
        self._argv: list[str] | None = None

    def _record(self) -> dict[str, object]:
        record: dict[str, object] = json.loads(self._record_path.read_text(encoding="utf-8"))
        return record

    def _process(self) -> TrackedProcess:
        entries = self._record()["processes"]
        assert isinstance(entries, list)
        [entry] = [e for e in entries if e["name"] == APISERVER]
        return TrackedProcess.from_json(entry)

    def stop(self, grace_s: float = 5.0) -> tuple[float, float]:
        """SIGTERM the API server, SIGKILL it after ``grace_s``; its exact command line is kept
        for ``start``. Returns the monotonic times of the SIGTERM (from then on it refuses new
        connections) and of its end (until then a terminating kube-apiserver still serves the
        watches and keep-alive connections already open)."""
        process = self._process()
        raw = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        self._argv = [part.decode() for part in raw.split(b"\0") if part]
        assert self._argv, f"no command line for pid {process.pid}"
        assert self._argv[0].endswith(APISERVER), self._argv
        signalled = time.monotonic()
        assert processes.stop(process, grace_s), "kube-apiserver survived SIGKILL"
        return signalled, time.monotonic()

    def start(self) -> float:
        """Start it again with the same command line (same port, certificates, etcd); record it.
        Returns the monotonic time of the spawn; ``wait_ready`` waits for ``/readyz``."""
        assert self._argv is not None, "start() without stop()"
        spawned = time.monotonic()
        process = processes.spawn(APISERVER, self._argv, self._log_path)
        record = self._record()
        entries = record["processes"]
        assert isinstance(entries, list)
        record["processes"] = [e for e in entries if e["name"] != APISERVER] + [process.to_json()]
        temporary = self._record_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        temporary.replace(self._record_path)
        return spawned

    def hang(self) -> float:
        """SIGSTOP the API server: connections are still accepted (by the kernel), nothing is
        answered. Returns the monotonic time of the signal."""
        os.kill(self._process().pid, signal.SIGSTOP)
        return time.monotonic()

    def resume(self) -> float:
        """SIGCONT: it answers again, with every connection and watch it had."""
        os.kill(self._process().pid, signal.SIGCONT)
        return time.monotonic()

    def ready(self) -> bool:
        argv = [str(self._kubectl), f"--kubeconfig={self._kubeconfig}", "--request-timeout=2s", "get", "--raw=/readyz"]
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
        return result.returncode == 0 and result.stdout.strip() == "ok"

    def wait_ready(self, timeout: float = 90.0) -> float:
        """Monotonic time at which ``/readyz`` first answered ok; raises after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return time.monotonic()
            time.sleep(0.1)
        tail = self._log_path.read_text(errors="replace").splitlines()[-20:]
        raise AssertionError("kube-apiserver not ready after restart:\n" + "\n".join(tail))

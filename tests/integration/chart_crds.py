"""Installs the CRDs of the chart's optional kinds (ServiceMonitor) into the test API server."""

from __future__ import annotations

from testrigs.devtools import charttools
from testrigs.devtools.controlplane import KubeAPI


def install_chart_crds(kube_api: KubeAPI) -> None:
    """Apply the pinned CRDs (server-side: they exceed the last-applied annotation's size) and
    wait until the API server serves them."""
    for path in charttools.chart_crds():
        kube_api.kubectl("apply", "--server-side", "--force-conflicts", f"--filename={path}")
        kube_api.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"--filename={path}")

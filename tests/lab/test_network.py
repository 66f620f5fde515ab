"""Stage 1: pod namespaces on a lab bridge, Service names and VIPs, the workload apps."""

from __future__ import annotations

import json

import pytest

from testrigs.lab.lab import Lab
from tests.lab import labkit
from tests.lab.labkit import Probe, SetMesh

pytestmark = pytest.mark.lab


@pytest.mark.parametrize(
    ("pod", "url"),
    [
        ("curl/curl-pod", "http://catalog.default/catalog/tags"),
        ("curl/curl-pod", "http://catalog.default.svc.cluster.local/catalog/tags"),
        ("default/curl-pod", "http://catalog/catalog/tags"),
        ("default/ui-0", "http://catalog:80/catalog/tags"),
    ],
)
def test_catalog_answers_the_walkthrough_json_under_each_service_name(
    mesh: SetMesh, probe: Probe, pod: str, url: str
) -> None:
    """Every name form resolves to the Service VIP and reaches catalog's app, as in the walkthrough."""
    mesh()
    result = probe(pod, url)
    assert result["outcome"] == "allowed", result
    assert result["evidence"]["body_prefix"] == labkit.CATALOG_TAGS


def test_curl_prints_the_catalog_tags_like_the_walkthrough(lab: Lab, mesh: SetMesh) -> None:
    """``kubectl exec curl-pod -n curl -- curl -s http://catalog.default/catalog/tags``."""
    mesh()
    assert labkit.curl(lab, "curl/curl-pod", "http://catalog.default/catalog/tags") == (0, labkit.CATALOG_TAGS)


def test_short_name_of_another_namespace_does_not_resolve(mesh: SetMesh, probe: Probe) -> None:
    """``catalog`` alone only resolves inside ``default`` (the search path is per namespace)."""
    mesh()
    assert probe("curl/curl-pod", "http://catalog/catalog/tags")["outcome"] == "dns-failure"


def test_vips_and_pods_use_the_benchmarking_range_only(lab: Lab) -> None:
    """Pods get 198.18.x.x, VIPs 198.19.x.x, and no pod namespace has a default route."""
    record = lab.load()
    assert record is not None
    assert all(pod.ip.startswith("198.18.") for pod in record.pods.values())
    assert all(vip.startswith("198.19.") for vip in record.vips.values())
    routes = lab.exec("default/catalog-0", ["ip", "route", "show"]).stdout
    assert "default" not in routes
    assert "198.18.0.0/15" in routes


def test_app_echoes_the_request_headers(lab: Lab, mesh: SetMesh) -> None:
    """Other paths return the request headers as JSON, so tests can see what reached the app."""
    mesh()
    code, body = labkit.curl(lab, "curl/curl-pod", "http://orders.default/echo", "x-probe: hello")
    assert code == 0
    echo = json.loads(body)
    assert (echo["pod"], echo["path"], echo["headers"]["x-probe"]) == ("orders-0", "/echo", "hello")

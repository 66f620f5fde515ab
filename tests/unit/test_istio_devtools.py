"""testrigs.devtools.istio: CRDs and chart files from the Go module cache, and the ambientz reader."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import yaml

from testrigs.devtools import istio


def test_crds_come_from_the_pinned_modules_in_the_module_cache() -> None:
    pins = istio.read_pins()
    manifests = istio.crd_manifests(pins)
    assert f"istio.io/istio@{pins.istio}" in str(manifests[0])
    assert all(f"sigs.k8s.io/gateway-api@{pins.gateway_api}" in str(path) for path in manifests[1:])
    kinds: dict[str, int] = {}
    for path in manifests:
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                kinds[document["kind"]] = kinds.get(document["kind"], 0) + 1
    assert kinds == {
        "CustomResourceDefinition": 25,
        "ValidatingAdmissionPolicy": 1,
        "ValidatingAdmissionPolicyBinding": 1,
    }


def test_gateway_api_pin_is_the_one_istio_requires() -> None:
    pins = istio.read_pins()
    istio_go_mod = (istio.istio_source(pins) / "go.mod").read_text()
    assert f"sigs.k8s.io/gateway-api {pins.gateway_api}\n" in istio_go_mod


def test_injector_configmap_carries_the_charts_waypoint_template_and_ambient_values() -> None:
    chart = istio.chart_dir("istio-control/istio-discovery")
    configmap = istio.injector_configmap(chart)
    config = yaml.safe_load(configmap["data"]["config"])
    assert config["templates"]["waypoint"] == (chart / "files" / "waypoint.yaml").read_text().strip() + "\n"
    values = json.loads(configmap["data"]["values"])
    assert values["pilot"]["env"]["PILOT_ENABLE_AMBIENT"] == "true"
    assert values["global"]["istioNamespace"] == "istio-system"
    assert configmap["metadata"] == {
        "name": "istio-sidecar-injector",
        "namespace": "istio-system",
        "labels": {"istio.io/rev": "default", "app.kubernetes.io/name": "istiod"},
    }


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_ambient_facts_adds_namespace_and_global_policies_and_drops_dry_run_and_converted() -> None:
    ambientz = {
        "workloads": [
            {
                "name": "w0-0",
                "namespace": "a",
                "authorizationPolicies": ["a/sel", "a/converted_peer_authentication_pa"],
            },
            {"name": "w1-0", "namespace": "b", "authorizationPolicies": ["b/dry"]},
        ],
        "services": [
            {"name": "w0", "namespace": "a", "waypoint": {"address": {"address": _b64("10.0.0.12")}}},
            {"name": "w1", "namespace": "b", "waypoint": {"hostname": {"hostname": "wp.b.svc.cluster.local"}}},
            {"name": "w2", "namespace": "b"},
        ],
        "policies": [
            {"name": "sel", "namespace": "a", "scope": "WORKLOAD_SELECTOR"},
            {"name": "wide", "namespace": "a", "scope": "NAMESPACE"},
            {"name": "mesh", "namespace": "istio-system", "scope": "GLOBAL"},
            {"name": "dry", "namespace": "b", "scope": "WORKLOAD_SELECTOR", "dryRun": True},
            {"name": "istio_converted_static_strict", "namespace": "istio-system", "scope": "GLOBAL"},
        ],
    }
    gateways = {"10.0.0.12": "a/wp", "wp.b.svc.cluster.local": "b/wp"}
    workloads, services = istio.ambient_facts(ambientz, gateways)
    assert workloads == {
        "a/w0-0": frozenset({"a/sel", "a/wide", "istio-system/mesh"}),
        "b/w1-0": frozenset({"istio-system/mesh"}),
    }
    assert services == {"a/w0": "a/wp", "b/w1": "b/wp", "b/w2": ""}


def test_workload_waypoints_name_each_pods_own_waypoint_by_address_or_hostname() -> None:
    ambientz = {
        "workloads": [
            {"name": "w0-0", "namespace": "a", "waypoint": {"address": {"address": _b64("10.0.0.12")}}},
            {"name": "w1-0", "namespace": "b", "waypoint": {"hostname": {"hostname": "wp.b.svc.cluster.local"}}},
            {"name": "w2-0", "namespace": "b"},
            {"name": "w3-0", "namespace": "b", "waypoint": {"address": {"address": _b64("10.9.9.9")}}},
        ]
    }
    gateways = {"10.0.0.12": "a/wp", "wp.b.svc.cluster.local": "b/wp"}
    assert istio.workload_waypoints(ambientz, gateways) == {
        "a/w0-0": "a/wp",
        "b/w1-0": "b/wp",
        "b/w2-0": "",
        "b/w3-0": f"(unknown address {_b64('10.9.9.9')})",  # shown as istiod wrote it
    }


# Shapes seen in istiod 1.31's /debug/ambientz (issue 11).
_ALLOW = {
    "name": "p1",
    "namespace": "aptest",
    "scope": "NAMESPACE",
    "groups": [
        {
            "rules": [
                {"matches": [{"destinationPorts": [8080], "notDestinationPorts": [9090]}]},
                {"matches": [{"notNamespaces": [{"prefix": "ns-"}], "principals": [{"suffix": "/sa/w1"}]}]},
            ]
        }
    ],
}
_DENY_ALL_EMPTY_MATCH = {"name": "p2", "action": "DENY", "groups": [{"rules": [{"matches": [{}]}]}]}


def test_translated_rules_are_read_as_ztunnel_reads_them() -> None:
    """rbac.rs: clauses AND, matches OR, fields AND; an empty match is skipped, an empty rule matches."""
    assert istio.ztunnel_policy_matches(_ALLOW, "cluster.local/ns/x/sa/w1", 8080) is True
    assert istio.ztunnel_policy_matches(_ALLOW, "cluster.local/ns/ns-a/sa/w1", 8080) is False
    assert istio.ztunnel_policy_matches(_ALLOW, "cluster.local/ns/x/sa/w1", 80) is False
    assert istio.ztunnel_policy_matches(_ALLOW, None, 8080) is False
    assert istio.ztunnel_policy_matches(_DENY_ALL_EMPTY_MATCH, None, 80) is False
    assert istio.ztunnel_policy_matches({"groups": [{}]}, None, 80) is True
    assert istio.ztunnel_policy_matches({"groups": []}, "cluster.local/ns/x/sa/w0", 80) is False


def test_plaintext_refused_reads_the_converted_peer_authentication() -> None:
    ambientz = {
        "policies": [
            {
                "name": "converted_peer_authentication_w-perm",
                "namespace": "ns",
                "action": "DENY",
                "groups": [
                    {
                        "rules": [
                            {"matches": [{"notDestinationPorts": [8080]}]},
                            {"matches": [{"notPrincipals": [{"presence": {}}]}]},
                        ]
                    }
                ],
            }
        ],
        "workloads": [
            {"name": "w0-0", "namespace": "ns", "authorizationPolicies": ["ns/converted_peer_authentication_w-perm"]},
            {"name": "w1-0", "namespace": "ns", "authorizationPolicies": []},
        ],
    }
    refused = istio.plaintext_refused(ambientz, frozenset({1, 8080, 9090}))
    assert refused == {"ns/w0-0": frozenset({1, 9090}), "ns/w1-0": frozenset()}


def test_istiod_runs_with_the_charts_default_revision() -> None:
    """The chart sets istiod's env REVISION to the revision value or "default" (never ""), so the
    test istiod reads only unlabelled config and config labelled ``istio.io/rev: default``."""
    deployment = istio.chart_dir("istio-control/istio-discovery") / "templates" / "deployment.yaml"
    text = deployment.read_text(encoding="utf-8")
    assert '- name: REVISION\n            value: "{{ .Values.revision | default `default` }}"' in text
    assert istio.istiod_env(Path("/kubeconfig"))["REVISION"] == "default"

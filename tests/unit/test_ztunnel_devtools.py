"""The real-ztunnel pieces that need no lab: the source pin and build patch, ZDS encoding, istio-cni's rules."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from testrigs.devtools import ztunnel
from testrigs.devtools.controlplane import ControlPlaneError
from testrigs.lab import inpod, zds

POD = zds.Pod(uid="uid-1", netns="malab-x-p1", name="catalog-0", namespace="default", service_account="catalog")


# The request message of ztunnel's proto/zds.proto (1.31), restated as the contract under test.
ZDS_SCHEMA = """
syntax = "proto3";
package zds;
message WorkloadInfo { string name = 1; string namespace = 2; string service_account = 3; }
message AddWorkload { string uid = 1; WorkloadInfo workload_info = 2; }
message KeepWorkload { string uid = 1; }
message DelWorkload { string uid = 2; }
message SnapshotSent {}
message WorkloadRequest {
  oneof payload { AddWorkload add = 1; KeepWorkload keep = 5; DelWorkload del = 2; SnapshotSent snapshot_sent = 3; }
}
"""


def _decode(message: bytes, tmp_path: Path) -> str:
    """protoc's own decoder, with the schema: an independent reading of what zds encodes."""
    protoc = shutil.which("protoc")
    assert protoc, "protoc is missing (Debian: protobuf-compiler)"
    (tmp_path / "zds.proto").write_text(ZDS_SCHEMA)
    argv = [protoc, f"--proto_path={tmp_path}", "--decode=zds.WorkloadRequest", "zds.proto"]
    return " ".join(subprocess.run(argv, input=message, capture_output=True, check=True).stdout.decode().split())


def test_zds_requests_decode_with_the_schema(tmp_path: Path) -> None:
    assert _decode(zds.encode_add(POD), tmp_path) == (
        'add { uid: "uid-1" workload_info { name: "catalog-0" namespace: "default" service_account: "catalog" } }'
    )
    assert _decode(zds.encode_del("uid-1"), tmp_path) == 'del { uid: "uid-1" }'
    assert _decode(zds.encode_keep("uid-1"), tmp_path) == 'keep { uid: "uid-1" }'
    assert _decode(zds.encode_snapshot_sent(), tmp_path) == "snapshot_sent { }"


def test_acks_and_hello_are_decoded() -> None:
    assert zds.decode_ack(b"\x0a\x00") == ""  # WorkloadResponse{ack: Ack{}}
    assert zds.decode_ack(b"\x0a\x05\x0a\x03bad") == "bad"  # Ack{error: "bad"}
    assert zds.decode_hello(b"\x08\x01") == zds.ZDS_VERSION_V1
    with pytest.raises(zds.ZdsError):
        zds.decode_ack(b"\x08\x01")


def test_build_patch_drops_only_the_git_dependency() -> None:
    cargo_toml = (
        '[features]\ntls-boring = ["dep:boring", "dep:boring-sys", "boring-rustls-provider/fips-only"]\n'
        "[dependencies]\n# Enabled with 'tls-boring'\n"
        'boring-rustls-provider = { git = "https://github.com/janrueth/boring-rustls-provider", optional = true } #\n'
        'boring = { version = "4", optional = true }\n'
    )
    patched = ztunnel.patch_cargo_toml(cargo_toml)
    assert patched == (
        '[features]\ntls-boring = ["dep:boring", "dep:boring-sys"]\n'
        "[dependencies]\n# Enabled with 'tls-boring'\n"
        'boring = { version = "4", optional = true }\n'
    )


def test_archive_with_another_sha256_is_refused_naming_the_pin(tmp_path: Path) -> None:
    pin = ztunnel.read_pin()
    archive = tmp_path / pin.file
    archive.write_bytes(b"not the release")
    with pytest.raises(ControlPlaneError, match=r"is not the pinned 47b645dc.*tools/ztunnel/source.json"):
        ztunnel.check_archive(archive, pin)
    with pytest.raises(ControlPlaneError, match="MESH_AUDITOR_ZTUNNEL_SOURCE"):
        ztunnel.check_archive(tmp_path / "missing.tar.gz", pin)
    right = ztunnel.SourcePin(pin.file, pin.tag, pin.commit, hashlib.sha256(b"not the release").hexdigest())
    ztunnel.check_archive(archive, right)


def test_source_location_is_a_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pin = ztunnel.read_pin()
    monkeypatch.delenv(ztunnel.SOURCE_ENV, raising=False)
    assert ztunnel.default_source(pin).parts[-3:] == ("shared", "vendor", "ztunnel-1.31.0-rc.0.tar.gz")
    monkeypatch.setenv(ztunnel.SOURCE_ENV, str(tmp_path / "z.tar.gz"))
    assert ztunnel.default_source(pin) == tmp_path / "z.tar.gz"
    assert ztunnel.cache_dir(pin).name == f"ztunnel-{pin.sha256[:12]}"


def test_inpod_rules_are_istio_cnis() -> None:
    rules = inpod.rules()
    # cni/pkg/iptables/iptables.go AppendInpodRules with cni/pkg/config constants.
    assert (
        "-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff "
        "-j REDIRECT --to-ports 15006" in rules
    )
    assert "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001" in rules
    assert "-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff" in rules
    assert "--dport 53" not in rules  # no DNS capture: lab pods resolve from hosts files

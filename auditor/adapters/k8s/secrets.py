"""Reads the one Secret key a required header's value comes from (``value.secretRef``).

Only ``get`` on the named Secret is needed (deploy/rbac.yaml grants it by resourceName); any
failure means the value is unknown, which the checks report as INCONCLUSIVE, never as a pass.
"""

from __future__ import annotations

import base64
import binascii

from kubernetes import client

from auditor.adapters.kubeapi import ApiRefused, ApiUnavailable, get_json


class ClusterSecretReader:
    """Header values from Secrets: the ``SecretLookup`` port is ``secret_value``."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        """One key of Secret ``namespace/name``, decoded as UTF-8; None when the Secret or key is
        missing, unreadable (403) or not text. Never raises for the API's answers."""
        try:
            secret = get_json(self._api, f"/api/v1/namespaces/{namespace}/secrets/{name}")
        except (ApiRefused, ApiUnavailable):
            return None
        encoded = (secret.get("data") or {}).get(key)
        if encoded is None:
            return None
        try:
            return base64.b64decode(str(encoded), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None

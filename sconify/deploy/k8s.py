"""A deployment on Kubernetes (``sconify deploy k8s``): a Secret holding policy.yaml and
secrets.json (mounted read-only at /run/secrets/sconify), a PersistentVolumeClaim per volume and
one for the state directory, and a Deployment of one replica that mounts them.

One replica and the Recreate strategy: a volume has one writer, and its freshness tag one
history (docs/deploy.md, "Freshness state"). ``enableServiceLinks: false`` and no service account
token: the service's environment is the policy's, not the cluster's.
"""

from __future__ import annotations

import base64
import re

import yaml

from sconify.errors import UsageError

POLICY_MOUNT = "/run/secrets/sconify"
VOLUME_SIZE = "1Gi"
STATE_SIZE = "64Mi"
MANAGED_BY = "sconify"
STATE_VOLUME = "sconify-state"  # the state directory's claim (docs/deploy.md, "Freshness state")


def k8s_name(text: str) -> str:
    """A DNS-1123 label from a policy or volume name (lower case, '-' for anything else)."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].strip("-")
    if not name:
        raise UsageError(f"{text!r} gives no Kubernetes name; rename the deployment with letters or digits")
    return name


def manifests(doc: dict, policy_yaml: bytes, secrets_json: bytes, image: str) -> list[dict]:
    """The Secret, the PersistentVolumeClaims and the Deployment of the policy ``doc``."""
    name = k8s_name(doc["name"])

    def labels() -> dict:  # a dict of its own each time: YAML would write anchors for a shared one
        return {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": MANAGED_BY}

    service = doc["services"][0]
    secret_name = f"{name}-sconify"
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": secret_name, "labels": labels()},
        "type": "Opaque",
        "data": {"policy.yaml": base64.b64encode(policy_yaml).decode(),
                 "secrets.json": base64.b64encode(secrets_json).decode()},
    }
    claims, mounts, volumes = [], [{"name": "sconify-policy", "mountPath": POLICY_MOUNT, "readOnly": True}], [
        {"name": "sconify-policy", "secret": {"secretName": secret_name, "defaultMode": 0o400}}]
    paths = [(volume["name"], volume["path"]) for volume in service.get("volumes") or []]
    state = (doc.get("sconify") or {}).get("state") or {"dir": "/var/lib/sconify"}
    if "dir" in state:
        paths.append((STATE_VOLUME, state["dir"]))
    taken = {"sconify-policy"}
    for volume, path in paths:
        volume_name = k8s_name(volume)
        if volume_name in taken:
            raise UsageError(f"volume {volume} gives the Kubernetes name {volume_name}, taken already; rename it "
                             "in policy.yaml")
        taken.add(volume_name)
        claim = f"{name}-{volume_name}"
        claims.append({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "labels": labels()},
            "spec": {"accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": STATE_SIZE if volume == STATE_VOLUME else VOLUME_SIZE}}},
        })
        mounts.append({"name": volume_name, "mountPath": path})
        volumes.append({"name": volume_name, "persistentVolumeClaim": {"claimName": claim}})
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels()},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": labels()},
                "spec": {
                    "enableServiceLinks": False,
                    "automountServiceAccountToken": False,
                    "containers": [{"name": k8s_name(service.get("name") or "service"), "image": image,
                                    "volumeMounts": mounts}],
                    "volumes": volumes,
                },
            },
        },
    }
    return [secret, *claims, deployment]


def render(documents: list[dict]) -> bytes:
    header = ("# sconify deploy k8s: the Secret below holds the deployment's secrets.json: keep this file as "
              "secret as secrets.json (mode 0600).\n")
    return (header + yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False)).encode()

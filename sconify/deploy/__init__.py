"""Deployments of generic images (docs/deploy.md): a service provider's own policy, secrets and
volume keys for an image a curator published with ``sconify-image --generic``.

- ``source``: the curator's manifest (a file, or attached in the registry) and its signature.
- ``secrets``: secret declarations, their generation, ``secrets.json`` (0600).
- ``policy``: ``policy.yaml``: the SCONE session and the ``sconify`` block, secret references.
- ``deployment``: ``init``, ``add`` and ``show`` of a deployment directory.
- ``k8s``: the Secret, PersistentVolumeClaims and Deployment for Kubernetes.
"""

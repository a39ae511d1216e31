"""``docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]``: images in a registry, through the OCI
distribution API (see docs/image-transports.md).

``client``: the HTTP client (TLS, the auth flows, retries, redirects); ``auth``: where
credentials come from; ``pull`` and ``push``: reading and writing images.
"""

from sconify.image.registry.options import RegistryOptions

__all__ = ["RegistryOptions"]

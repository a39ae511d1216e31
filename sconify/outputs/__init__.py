"""Outputs: what a conversion writes beside the image, for the people who run and audit it.

``manifest`` (the measurement manifest, JSON), ``session`` (the CAS session, YAML), ``keys`` (the
keys file of the single-owner flow) and ``attest`` (DSSE signatures over the manifest).
"""

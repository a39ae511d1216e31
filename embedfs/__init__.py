"""embedfs: a deterministic, hashed, compressed archive embedded in an ELF executable,
and the SGX-style measurement (MRENCLAVE) of that executable.

Knows nothing about container images.
"""

__version__ = "0.1.0"

"""sconify: turn ordinary container images into confidential, measurable images."""

__version__ = "0.1.0"

# An image of sconify itself, for CI users who run it as a container.
#
# BASE_IMAGE: any Debian-based image with Python 3.11+ and its venv module (python3-venv).
#   Where registries are reachable:   --build-arg BASE_IMAGE=python:3.11-slim
#   Offline, from Debian packages:    sconify demo tool-base --to docker-daemon:sconify-tool-base:latest
#                                     --build-arg BASE_IMAGE=sconify-tool-base:latest
# The build needs no network: sconify and its dependencies come as wheels in the build context,
#   pip wheel . -w wheels/
# Every RUN is in exec form, so the base image needs no shell.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

COPY wheels/ /tmp/sconify-wheels/
RUN ["python3", "-m", "venv", "/opt/sconify"]
RUN ["/opt/sconify/bin/python", "-m", "pip", "install", "--no-index", "--no-cache-dir", "--find-links", "/tmp/sconify-wheels", "sconify"]

ENV PATH=/opt/sconify/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENTRYPOINT ["/opt/sconify/bin/sconify"]
CMD ["--help"]

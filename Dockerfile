# An image of sconify itself, for CI users who run it as a container.
#
# BASE_IMAGE: any Debian-based image with Python 3.11+ and its venv module (python3-venv).
#   Where registries are reachable:   --build-arg BASE_IMAGE=python:3.11-slim
#   Offline, from Debian packages:    sconify demo tool-base --to docker-daemon:sconify-tool-base:latest
#                                     --build-arg BASE_IMAGE=sconify-tool-base:latest
# The build needs no network: sconify and its dependencies come as wheels in the build context,
# and the runtime that converted images carry (docs/runtime.md) comes prebuilt (the tool image
# has no compiler):
#   pip wheel . -w wheels/ && make -C runtime
# The one RUN is in exec form (the base image needs no shell) and makes the venv and installs
# into it in one step, and one ENV sets both variables: with the vfs storage driver every extra
# step copies the whole rootfs.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

COPY wheels/ /tmp/sconify-wheels/
COPY runtime/build/bin/sconify-run /opt/sconify-runtime/bin/sconify-run
COPY runtime/build/lib/libsconify-shield.so /opt/sconify-runtime/lib/libsconify-shield.so
RUN ["python3", "-c", "import subprocess, venv; venv.create('/opt/sconify', with_pip=True); subprocess.run(['/opt/sconify/bin/python', '-m', 'pip', 'install', '--no-index', '--no-cache-dir', '--find-links', '/tmp/sconify-wheels', 'sconify'], check=True)"]

ENV SCONIFY_RUNTIME_DIR=/opt/sconify-runtime \
    PATH=/opt/sconify/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENTRYPOINT ["/opt/sconify/bin/sconify"]
CMD ["--help"]

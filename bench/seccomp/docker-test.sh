#!/bin/sh
# Runs the probes and the notif benchmark inside a container under Docker's
# default seccomp profile (no --security-opt): image imported from a tar of
# static binaries (no registry needed).
set -eu
cd "$(dirname "$0")"
make -s bench-static probes-static minicat
t=$(mktemp -d)
trap 'rm -rf "$t" "$t.tar"' EXIT
mkdir -p "$t/bin" "$t/tmp"
cp bench-static "$t/bench"; cp probes-static "$t/probes"
cp minicat "$t/bin/cat"; cp minicat "$t/bin/true"
head -c 65536 /dev/urandom > "$t/data"
tar -C "$t" -cf "$t.tar" .
docker import "$t.tar" sconify-seccomp-probe:local >/dev/null
rm -rf "$t" "$t.tar"
echo "== in a container, default seccomp profile"
docker run --rm sconify-seccomp-probe:local /probes /data 2>&1
for m in none trap notif-cont notif-emul; do
    docker run --rm -e BENCH_ITERS="${BENCH_ITERS:-10000}" sconify-seccomp-probe:local /bench $m /data
done
docker rmi -f sconify-seccomp-probe:local >/dev/null

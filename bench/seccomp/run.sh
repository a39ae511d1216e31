#!/bin/sh
# Builds the prototypes and prints ns per call, side by side, for each way of
# seeing a file syscall, then the behaviour probes.
#   BENCH_ITERS=N  calls per round (default 10000; notif modes use N/4), 7 rounds, minimum
#   ./run.sh --docker   also runs the probes and benchmark inside a container
set -eu
cd "$(dirname "$0")"
make -s all
f=$(mktemp)
trap 'rm -f "$f"' EXIT
head -c 65536 /dev/urandom > "$f"
echo "ns per call (minimum of 7 rounds); read = pread 4 KiB at offset 0; fstat = glibc fstat (newfstatat)"
printf '%-16s %10s %10s %10s\n' mode openat+close read4k fstat
./bench none "$f"
LD_PRELOAD=$PWD/preload.so BENCH_LABEL=ld_preload ./bench none "$f"
./bench allow-const "$f"
./bench allow-ip "$f"
./bench trap "$f"
./bench notif-cont "$f"
./bench notif-emul "$f"
./bench notif-emul-sync "$f"
if command -v taskset >/dev/null; then
    BENCH_LABEL=notif-cont/1cpu taskset -c 0 ./bench notif-cont "$f"
    BENCH_LABEL=notif-emul/1cpu taskset -c 0 ./bench notif-emul "$f"
    BENCH_LABEL=notif-sync/1cpu taskset -c 0 ./bench notif-emul-sync "$f"
fi
echo
echo "behaviour probes (dynamic build, then static build)"
./probes "$f"
echo "-- static"
./probes-static "$f"
if [ "${1:-}" = "--docker" ]; then echo; ./docker-test.sh; fi

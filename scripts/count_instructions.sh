#!/bin/sh
# Instructions the simulator executes for the first N requests of the Azure trace, counted by
# valgrind (cachegrind). On a shared VM wall time moves by +-15% within minutes, so a change
# worth 1-5% cannot be seen in seconds; instruction counts repeat to about +-0.5%.
#   sh scripts/count_instructions.sh [N]        (N >= 50, default 1000: about a minute)
# Prints the instructions of a run of N requests, of a run of 50 (mostly start-up: imports,
# booting the kernel) and their difference, the simulation itself. Run it on both sides of a
# change, on the same machine. Needs valgrind; hash seeds are fixed so dicts and sets behave
# alike in every run.
set -eu
N=${1:-1000}
case $N in
    '' | *[!0-9]*) echo "count_instructions: N must be a whole number, not '$N'" >&2; exit 2 ;;
esac
[ "$N" -ge 50 ] || { echo "count_instructions: N must be at least 50 (the start-up run's size)" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "count_instructions: valgrind is not installed" >&2; exit 1; }
# The interpreter itself, not a wrapper script (pyenv's shims are shell scripts).
PY=$(python3 -c 'import sys; print(sys.executable)')
count() {
    PYTHONHASHSEED=0 valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \
        "$PY" -m llmos.userland.cli sim --trace default --device a100 --model llama-2-7b \
        --policy fcfs --num-requests "$1" 2>&1 >/dev/null | awk '/I *refs/ {gsub(",", "", $4); print $4}'
}
whole=$(count "$N")
start=$(count 50)
if [ -z "$whole" ] || [ -z "$start" ]; then
    echo "count_instructions: a run failed (try: llmos sim --trace default --num-requests $N)" >&2
    exit 1
fi
echo "instructions: $N requests $whole, 50 requests $start, simulation $((whole - start))"

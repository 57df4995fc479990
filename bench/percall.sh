#!/bin/bash
# Instructions per call of one small call (callgrind counts are stable on a loaded machine,
# wall times are not). Usage: bench/percall.sh PATH N, PATH one of percall.py's CALLS
# (module, torch, ops, grad, tgrad, normalize, fyi, opout); run from the repository root with
# NORMGEN_NUM_THREADS=1. Callgrind starts with instrumentation off (Python and torch imports
# run at a few times native speed), percall.py warms up and waits, this script turns
# instrumentation on around the N calls only.
set -e
d=$(mktemp -d "${TMPDIR:-/tmp}/percall.XXXX")
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$d/cg.out" \
    python "$(dirname "$0")/percall.py" "$1" "$2" "$d" >"$d/log" 2>&1 &
pid=$!
while [ ! -f "$d/READY" ]; do sleep 0.5; done
callgrind_control -i on $pid >/dev/null
touch "$d/GO"
while [ ! -f "$d/DONE" ]; do sleep 0.2; done
callgrind_control -i off $pid >/dev/null
touch "$d/END"
wait $pid
total=$(grep -E "^totals:" "$d"/cg.out* | head -1 | awk '{print $2}')
echo "$1 n=$2 instructions=$total per_call=$((total / $2))"

#!/usr/bin/env bash
# An exception on one rank ends the whole job: one line naming the rank, non-zero status, no hang.
source "$(dirname "$0")/common.sh"
B=$LORAREC_BIN
"$LORAREC_PYTHON" "$REF" make-model m
"$LORAREC_PYTHON" "$REF" make-images im.h5 --n 4
start=$(date +%s)
set +e
LORAREC_FAULT=1:start timeout 60 "$LORAREC_MPIEXEC" $LORAREC_MPI_FLAGS -np 2 $B embed --model m --images im.h5 --out o.h5 >out.txt 2>err.txt
rc=$?
set -e
took=$(( $(date +%s) - start ))
cat err.txt
[ $rc -ne 0 ] || fail "job with a failing rank exited 0"
[ $rc -ne 124 ] || fail "job hung (killed by timeout)"
grep -q 'error \[rank 1\]: fault injected' err.txt || fail "no line naming rank 1"
[ ! -e o.h5 ] || fail "an output file was written"
echo "abort_on_error: rc=$rc after ${took}s"
# A bad input on every rank: exit status 2 from mpirun too.
set +e
timeout 60 "$LORAREC_MPIEXEC" $LORAREC_MPI_FLAGS -np 2 $B embed --model nowhere --images im.h5 --out o.h5 >/dev/null 2>err.txt
rc=$?
set -e
[ $rc -eq 2 ] || { cat err.txt; fail "bad input under mpirun exited $rc, expected 2"; }
echo "abort_on_error: all passed"

#!/usr/bin/env bash
# Fuzzes the input parsers with libFuzzer (clang from Debian) + ASan + UBSan:
#   fuzz_safetensors  the safetensors validator on arbitrary bytes
#   fuzz_peft         a PEFT adapter directory (config JSON + safetensors) for a small ViT
#   fuzz_config       INI config files through the CLI's option parsing
#   bash bench/fuzz.sh [SECONDS_PER_TARGET (default 600)] [TARGETS...]
# The targets run side by side (one per core, the rest queued) for the given time each, starting
# from seeds made from valid files (tests/reference/tiny_clip.py, configs/*.ini) plus the saved
# corpus under build-fuzz/corpus/ and the regression inputs under tests/data/corpus/. Prints a
# table (executions, corpus size, crashes); any crash input is kept under build-fuzz/crashes/
# (and makes the script exit 1): fix it, then copy it into tests/data/corpus/<kind>/, where the
# bad_inputs test replays it through the CLI.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SECS=${1:-600}; shift || true
TARGETS=("$@"); [ ${#TARGETS[@]} -gt 0 ] || TARGETS=(fuzz_safetensors fuzz_peft fuzz_config)
B=$REPO/build-fuzz
if ! command -v clang++ >/dev/null || ! dpkg -s libclang-rt-14-dev >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends clang libclang-rt-14-dev >/dev/null
fi
if [ ! -f "$B/CMakeCache.txt" ]; then
  CC=clang CXX=clang++ cmake -S "$REPO" -B "$B" -DLORAREC_BUILD_FUZZ=ON -DLORAREC_BUILD_TESTS=OFF -DLORAREC_BUILD_CLI=OFF \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$B.configure.log" 2>&1 || { cat "$B.configure.log"; exit 1; }
fi
cmake --build "$B" --target fuzzers -j "$(nproc)" >"$B/build.log" 2>&1 || { tail -30 "$B/build.log"; exit 1; }

# ---- seeds
S=$B/seeds; rm -rf "$S"; mkdir -p "$S"/{fuzz_safetensors,fuzz_peft,fuzz_config}
PY=/usr/bin/python3; REF=$REPO/tests/reference/tiny_clip.py
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
$PY "$REF" make-model "$T/m" >/dev/null
for spec in "l1 --r 4" "l2 --r 2 --layers 0,2" "l3 --r 8 --alpha 4 --classes 3"; do
  set -- $spec; $PY "$REF" make-lora "$T/$1" --model "$T/m" "${@:2}" >/dev/null
done
$PY - "$T" "$S" <<'PY'
import json, os, struct, sys
t, s = sys.argv[1:]
for i, l in enumerate(("l1", "l2", "l3")):
    w = open(f"{t}/{l}/adapter_model.safetensors", "rb").read()
    c = open(f"{t}/{l}/adapter_config.json", "rb").read()
    open(f"{s}/fuzz_safetensors/lora{i}", "wb").write(w)
    open(f"{s}/fuzz_peft/lora{i}", "wb").write(struct.pack("<H", len(c)) + c + w)
# a small plain safetensors file with several dtypes and metadata
body, header, off = b"", {"__metadata__": {"format": "pt"}}, 0
for name, dt, shape, size in (("a", "F32", [2, 3], 4), ("b", "I64", [1], 8), ("c", "BF16", [4], 2), ("d", "U8", [0], 1)):
    n = size
    for d in shape: n *= d
    header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + n]}; body += b"\x01" * n; off += n
h = json.dumps(header).encode()
open(f"{s}/fuzz_safetensors/small", "wb").write(struct.pack("<Q", len(h)) + h + body)
PY
cp "$REPO"/configs/*.ini "$S/fuzz_config/"
for kind in safetensors config; do
  [ -d "$REPO/tests/data/corpus/$kind" ] && cp "$REPO/tests/data/corpus/$kind/"* "$S/fuzz_$kind/" 2>/dev/null || true
done

# ---- run
mkdir -p "$B/crashes"
pids=()
for t in "${TARGETS[@]}"; do
  mkdir -p "$B/corpus/$t"
  ( cd "$B" && ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 \
      "$B/tests/fuzz/$t" "$B/corpus/$t" "$S/$t" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 \
      -max_len=65536 -print_final_stats=1 -artifact_prefix="$B/crashes/$t-" >"$B/$t.log" 2>&1 ) &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
printf '\n%-18s %8s %12s %10s %8s %8s\n' target seconds executions "exec/s" corpus crashes
for t in "${TARGETS[@]}"; do
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$B/$t.log" | grep -oE '[0-9]+$' || echo "?")
  secs=$(grep -oE 'Done [0-9]+ runs in [0-9]+ second' "$B/$t.log" | grep -oE 'in [0-9]+' | grep -oE '[0-9]+' || echo "$SECS")
  eps=$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$B/$t.log" | grep -oE '[0-9]+$' || echo "?")
  crashes=$(ls "$B/crashes" | grep -c "^$t-" || true)
  printf '%-18s %8s %12s %10s %8s %8s\n' "$t" "$secs" "$runs" "$eps" "$(ls "$B/corpus/$t" | wc -l)" "$crashes"
done
echo "machine: $(nproc) cores, $(clang++ --version | sed -n 1p); logs: $B/<target>.log; crash inputs: $B/crashes/"
if [ $status != 0 ] || [ -n "$(ls "$B/crashes")" ]; then
  echo "fuzz: FINDINGS (see the logs and $B/crashes)"; exit 1
fi
echo "fuzz: no crash"

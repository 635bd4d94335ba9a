#!/usr/bin/env bash
# Writes that fail: a full disk (a small tmpfs filled up), a read-only file system, an output
# path under a regular file, a file replaced by a directory, a file-size limit (ulimit -f). Each
# time: a one-line error naming the file and the cause, a non-zero exit, no temporary left behind,
# and the previous complete outputs unchanged (same SHA-256). An output directory that cannot be
# written at all (read-only, under a file) is refused before any work (exit 2).
source "$(dirname "$0")/common.sh"
REPO="$REPO_DIR"
quick_pipeline metatrain
B=$LORAREC_BIN
CFG=$REPO/configs/quick.ini
sums() { find "$@" -type f -print0 | sort -z | xargs -0 sha256sum; }
no_temporaries() { [ -z "$(find "$1" -name '.*.tmp.*')" ] || fail "temporary files left in $1: $(find "$1" -name '.*.tmp.*')"; }
# expect_write_error NEEDLE -- command...: exit 1, the needle in the one error line.
expect_write_error() {
  local needle=$1; shift 2
  set +e; "$@" >out.txt 2>err.txt; local rc=$?; set -e
  [ $rc = 1 ] || { cat out.txt err.txt; fail "'$*' exited $rc, expected 1"; }
  grep -qE -- "$needle" err.txt || { cat err.txt; fail "'$*': no error matching '$needle'"; }
  [ "$(grep -c 'error' err.txt)" = 1 ] || { cat err.txt; fail "'$*': more than one error line"; }
  echo "ok: $(grep error err.txt)"
}

# ---- 1. A full disk: outputs of every stage on a 16 MiB tmpfs, then the disk is filled up and
# each stage is asked to write more.
D=$WORK/disk
mkdir -p "$D"
if mount -t tmpfs -o size=16m tmpfs "$D" 2>mount.txt; then
  trap 'umount -l "$D" 2>/dev/null; rm -rf "$WORK"' EXIT
  $B zoo --config "$CFG" --out "$D/zoo" --num-loras 2 >/dev/null 2>&1 || fail "zoo on tmpfs"
  $B invert --config "$CFG" --zoo "$D/zoo" --out "$D/pool" >/dev/null 2>&1 || fail "invert on tmpfs"
  $B metatrain --config "$CFG" --pool "$D/pool" --out "$D/meta" >/dev/null 2>&1 || fail "metatrain on tmpfs"
  $B eval --config "$CFG" --zoo "$D/zoo" --meta "$D/meta" --methods nn,meta --out "$D/eval" >/dev/null 2>&1 || fail "eval on tmpfs"
  before=$(sums "$D")
  dd if=/dev/zero of="$D/filler" bs=64k status=none 2>/dev/null || true  # until the disk is full
  echo "disk full: $(df -h "$D" | tail -1 | awk '{print $3 " used of " $2}')"
  expect_write_error "cannot write '$D/zoo/lora_002'.*No space left on device" -- $B zoo --config "$CFG" --out "$D/zoo" --num-loras 3
  # 48 KiB free: the small JSON files fit, an HDF5 pool file (~100 KiB) does not.
  truncate -s -48K "$D/filler"
  expect_write_error "cannot write '$D/pool2/lora_00[01].h5'" -- $B invert --config "$CFG" --zoo "$D/zoo" --out "$D/pool2"
  rm -rf "$D/pool2"
  dd if=/dev/zero of="$D/filler" bs=4k oflag=append conv=notrunc status=none 2>/dev/null || true
  expect_write_error "cannot write '$D/meta.work/.*'.*No space left on device" -- $B metatrain --config "$CFG" --pool "$D/pool" --out "$D/meta" --resume --steps 40
  # 8 KiB free: the metrics lines fit, the first checkpoint (~30 KiB) does not.
  truncate -s -8K "$D/filler"
  expect_write_error "cannot write '$D/meta3.work/checkpoint.safetensors'.*No space left on device" -- $B metatrain --config "$CFG" --pool "$D/pool" --out "$D/meta3"
  rm -rf "$D/meta3.work"
  dd if=/dev/zero of="$D/filler" bs=4k oflag=append conv=notrunc status=none 2>/dev/null || true
  expect_write_error "cannot write '$D/eval/.*'.*No space left on device" -- $B eval --config "$CFG" --zoo "$D/zoo" --meta "$D/meta" --methods nn --out "$D/eval"
  rm -f "$D/filler"
  [ "$(sums "$D")" = "$before" ] || { diff <(echo "$before") <(sums "$D"); fail "a complete output changed after the failed writes"; }
  no_temporaries "$D"
  echo "full disk: every previous output unchanged (sha256), no temporary left"

  # ---- 2. A read-only file system: the output directory is checked before any work (exit 2); a
  # write that fails later (the file system turned read-only mid-run) is case 1's error.
  mount -o remount,ro "$D"
  expect_status 2 "$D/eval: directory is not writable" -- $B eval --config "$CFG" --zoo "$D/zoo" --meta "$D/meta" --methods nn --shots 5 --out "$D/eval"
  mount -o remount,rw "$D"
  [ "$(sums "$D")" = "$before" ] || fail "a complete output changed on the read-only file system"
else
  fail "cannot mount a tmpfs to fill up ($(cat mount.txt)); this test needs root"
fi

# ---- 3. An output path under a regular file (refused before any work, exit 2); a file replaced
# by a directory in an eval directory of its own (the write fails at the end).
touch plainfile
expect_status 2 "plainfile/zoo: cannot be created: " -- $B zoo --config "$CFG" --out plainfile/zoo --num-loras 1
mkdir -p ev/results.csv
echo '{"kind": "eval", "command": "eval"}' >ev/.lorarecycle.json
expect_write_error "cannot write 'ev/results.csv'.*(Is a directory|Directory not empty)" -- $B eval --config "$CFG" --zoo "$D/zoo" --meta "$D/meta" --methods nn --shots 1 --episodes 10 --out ev
[ -d ev/results.csv ] || fail "the directory in the way was removed"
mkdir -p m2 && mkdir -p m2.work/checkpoint.safetensors
set +e; $B metatrain --config "$CFG" --out m2 --resume >out.txt 2>err.txt; rc=$?; set -e
[ $rc = 2 ] || { cat err.txt; fail "a directory in place of the checkpoint: exit $rc, expected 2"; }
grep -q "m2.work/checkpoint.safetensors" err.txt || { cat err.txt; fail "the error does not name the checkpoint"; }
echo "ok: $(grep error err.txt)"

# ---- 4. A file-size limit: the checkpoint cannot be written (EFBIG, reported like a full disk).
expect_write_error "cannot write 'lim.work/.*'.*File too large" -- bash -c "ulimit -f 8; exec $B metatrain --config '$CFG' --out lim"
no_temporaries lim.work
echo "write_failures: all passed"

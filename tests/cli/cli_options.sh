#!/usr/bin/env bash
# --help, --version, unknown commands/options, INI config files merged under the command line.
source "$(dirname "$0")/common.sh"
B=$LORAREC_BIN
grep -q '^lorarecycle [0-9]' <<<"$($B --version)" || fail "--version"
for c in pretrain zoo invert embed; do
  grep -q "^  $c " <<<"$($B --help)" || fail "--help does not list $c"
  grep -q -- "--log-level" <<<"$($B $c --help)" || fail "$c --help"
done
grep -q -- '--batch-size' <<<"$($B embed --help)" || fail "embed --help lists its options"
set +e; $B nosuch >/dev/null 2>&1; [ $? = 2 ] || fail "unknown command must exit 2"; set -e
expect_status 2 "unrecognised option '--bogus'" -- $B embed --bogus 1
expect_status 2 "--model is required" -- $B embed --images x.h5 --out y.h5
expect_status 2 "batch-size" -- $B embed --batch-size abc
expect_status 2 "--w-div must be >= 0" -- $B invert --model m --zoo z --out p --w-div=-1

"$LORAREC_PYTHON" "$REF" make-model m
"$LORAREC_PYTHON" "$REF" make-images im.h5 --n 5
cat > good.ini <<INI
# comments are fine
log-level = warn
[embed]
model = m
images = im.h5
out = from_config.h5
batch-size = 2
[common]
bf16 = false
[pretrain]
steps = 5
INI
$B embed --config good.ini || fail "embed from config"
[ -f from_config.h5 ] || fail "config value 'out' not used"
$B embed --config good.ini --out from_cli.h5 || fail "override"
[ -f from_cli.h5 ] || fail "the command line must override the config file"

printf '[embed]\nmodel = m\nbatchsize = 3\n' > unknown_key.ini
expect_status 2 "unknown_key.ini:3: unknown key 'batchsize'" -- $B embed --config unknown_key.ini
printf '[embedd]\nmodel = m\n' > unknown_section.ini
expect_status 2 "unknown section [embedd]" -- $B embed --config unknown_section.ini
printf '[embed]\nmodel = m\n\nbatch-size = many\n' > bad_value.ini
expect_status 2 "bad_value.ini:4:" -- $B embed --config bad_value.ini
printf '[common]\nmodle = m\n' > common_typo.ini
expect_status 2 "common_typo.ini:2: unknown key 'modle' (no command has it)" -- $B embed --config common_typo.ini
printf '[embed]\nbatch-size = 2\nbatch-size = 3\n' > twice.ini
expect_status 2 "twice.ini:3: 'batch-size' is set twice in one section (first at line 2)" -- $B embed --config twice.ini

# [common] keys apply to the commands that have them (zoo and steps are not embed's); [embed] overrides
# [common]; inline comments; a later --config overrides an earlier one, the command line both.
cat > shared.ini <<INI
[common]
model = m   # the VFM
zoo = no/such/zoo
out = from_common.h5
batch-size = 1
[embed]
images = im.h5
out = from_section.h5  ; wins over [common]
[zoo]
epochs = 1
INI
printf '[common]\nout = from_layer.h5\n' > layer.ini
$B embed --config shared.ini || fail "[common] keys of other commands must be skipped"
[ -f from_section.h5 ] && [ ! -f from_common.h5 ] || fail "[embed] must override [common]"
$B embed --config shared.ini --config layer.ini || fail "layered configs"
[ -f from_layer.h5 ] || fail "a later --config must override an earlier one"
$B embed --config shared.ini --config layer.ini --out from_cli2.h5 || fail "layered configs + command line"
[ -f from_cli2.h5 ] || fail "the command line must override every config file"
printf 'bf16 = maybe\n' > bad_switch.ini
expect_status 2 "takes true or false" -- $B embed --config bad_switch.ini
expect_status 2 "no such file" -- $B embed --model m --images missing.h5 --out o.h5
echo "cli_options: all passed"

#!/usr/bin/env bash
# cluster/pipeline.sh's chain without Slurm: a stand-in sbatch on PATH records each submission (job
# name, dependency and the stage's arguments) and answers a job id. The demo preset: no BN-prior
# stage (its [invert] w-bn is 0), the anchor's glyphs retrieved after the inversion, the masked run
# with 40 anchor glyphs per episode; the quick preset: the prior, no anchor, the masked run as its
# config says; --from anchor starts there without a dependency.
source "$(dirname "$0")/common.sh"
mkdir -p bin
cat >bin/sbatch <<'SH'
#!/usr/bin/env bash
n=$(($(cat "$SBATCH_LOG.n" 2>/dev/null || echo 0) + 1))
echo "$n" >"$SBATCH_LOG.n"
name=- dep=-
while [ $# -gt 0 ]; do
  case "$1" in
    --job-name) name=$2; shift 2 ;;
    --dependency) dep=$2; shift 2 ;;
    */stage.sbatch) shift; break ;;
    *) shift ;;
  esac
done
echo "$name $dep $*" >>"$SBATCH_LOG"
echo $((1000 + n))
SH
chmod +x bin/sbatch
export PATH="$WORK/bin:$PATH"
# chain PRESET [args...]: the submissions of cluster/pipeline.sh --preset PRESET into chain_PRESET.txt
chain() {
  local preset=$1 log=$WORK/chain_$1.txt
  shift
  rm -f "$log" "$log.n"
  SBATCH_LOG=$log bash "$REPO_DIR/cluster/pipeline.sh" --preset "$preset" --workdir "$WORK/w" "$@" >/dev/null ||
    fail "pipeline.sh --preset $preset $*"
  cat "$log"
}
names() { cut -d' ' -f1 "$WORK/chain_$1.txt" | xargs; }
C=$REPO_DIR/configs
chain demo
[ "$(names demo)" = "lr-data lr-vfm lr-zoo lr-invert lr-anchor lr-meta lr-meta_mask75 lr-eval lr-report" ] ||
  fail "demo chain: $(names demo)"
grep -qx "lr-anchor afterok:1004 invert $C/demo.ini --co-teachers 0 --retrieve data/demo/base.h5 --out runs/demo/anchor_glyphs" \
  chain_demo.txt || fail "demo: the anchor's retrieval"
grep -qx "lr-meta afterok:1005 metatrain $C/demo.ini --out runs/demo/meta --mask-ratio 0" chain_demo.txt || fail "demo: dense run"
grep -qx "lr-meta_mask75 afterok:1006 metatrain $C/demo.ini --out runs/demo/meta_mask75 --mask-ratio 0.75 --distill-images 40" \
  chain_demo.txt || fail "demo: masked run with 40 anchor glyphs"
chain quick
[ "$(names quick)" = "lr-data lr-vfm lr-prior lr-zoo lr-invert lr-meta lr-meta_mask75 lr-eval lr-report" ] ||
  fail "quick chain: $(names quick)"
grep -qx "lr-meta_mask75 afterok:1006 metatrain $C/quick.ini --out runs/quick/meta_mask75 --mask-ratio 0.75" chain_quick.txt ||
  fail "quick: masked run"
mv chain_demo.txt chain_demo_full.txt
chain demo --from anchor
[ "$(names demo)" = "lr-anchor lr-meta lr-meta_mask75 lr-eval lr-report" ] || fail "--from anchor: $(names demo)"
grep -q "^lr-anchor - invert" chain_demo.txt || fail "--from anchor: the first job depends on nothing"
# The masked run's anchor rule on its own: at most an episode's images (way x (shot + query), metatrain's
# defaults 5, 1, 15 where unset), nothing where distill-images is unset or within it.
source "$REPO_DIR/launch/config_rules.sh"
printf '[metatrain]\nway = 5\nquery = 15\ndistill-images = 160\n' >mask_a.ini
printf '[metatrain]\ndistill-images = 80\n' >mask_b.ini
printf '[metatrain]\nway = 10\nshot = 2\nquery = 3\ndistill-images = 51\n' >mask_c.ini
[ "$(masked_anchor_flags mask_a.ini)" = "--distill-images 80" ] || fail "masked_anchor_flags: 160 over 5 x (1 + 15)"
[ -z "$(masked_anchor_flags mask_b.ini)" ] || fail "masked_anchor_flags: 80 within the defaults' 80"
[ "$(masked_anchor_flags mask_c.ini)" = "--distill-images 50" ] || fail "masked_anchor_flags: 51 over 10 x (2 + 3)"
[ -z "$(masked_anchor_flags "$C/quick.ini")" ] || fail "masked_anchor_flags: quick.ini sets no distill-images"
echo "ok: cluster/pipeline.sh chains (demo, quick, --from anchor), the masked run's anchor rule"

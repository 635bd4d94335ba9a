# Sourced by the benchmarks that rerun tables measured with the main job's earlier configs
# (bench/science.sh, bench/surrogate_recipes.sh, bench/malloc_ab.sh), from the repository root.
#
# FIVE_WAY: sed arguments that turn configs/demo.ini back to the main job's 5-way zoo of before
# bench/science.sh's "way10c" part (2026-12-07, docs/science.md "The main recipe on a zoo of 10-way
# tasks"): [zoo] 5-way tasks, [invert] 8 surrogates per LoRA and class, [metatrain] single-LoRA
# (KL) episodes at their default share.
FIVE_WAY=(-e '/^\[zoo\]/,/^\[/s/^way *=.*/way = 5/' -e '/^\[invert\]/,/^\[/s/^per-class *=.*/per-class = 8/'
  -e '/^single-lora-prob *=/d')
# demo800_ini OUT writes configs/demo.ini as it was until bench/science.sh's "glyphs" part
# (2026-12-06, docs/science.md "Distilled on more public glyphs"): the [metatrain] anchor the
# start's own features on the 800 glyphs of runs/demo/anchor_pool, and [invert] without the
# anchor's retrieval keys, so that retrieval keeps its 8 images per class among 4,096; and the
# meta-LoRA on q and v only (the default targets), as until the "concat" part; the anchor at weight
# 1, as until the "anchorw" part; the 5-way zoo (FIVE_WAY).
demo800_ini() {
  sed "${FIVE_WAY[@]}" -e '/^retrieve-per-class *=/d' -e '/^retrieve-candidates *=/d' \
    -e '/^\[metatrain\]/,/^\[/s/^distill-weight *=.*/distill-weight = 1/' \
    -e '/^\[metatrain\]/,/^\[/s|^distill-pool *=.*|distill-pool = runs/demo/anchor_pool|' \
    -e '/^\[metatrain\]/,/^\[/s/^distill-targets *=.*/distill-targets = start/' \
    -e '/^\[metatrain\]/,/^\[/{/^targets *=/d;/^init-partial *=/d}' configs/demo.ini >"$1"
}
# rank4_ini OUT writes that config with its [metatrain] section as it was until the main job
# started from lora-avg (2026-12-05, docs/science.md "The main job from lora-avg"): a fresh rank-4
# meta-LoRA, CE at T 128 + each surrogate's own LoRA distilled, 300 steps at lr 1e-3.
rank4_ini() {
  demo800_ini "$1.base"
  awk 'BEGIN { skip = 0 }
       /^\[metatrain\]/ { print; while ((getline line < "/dev/stdin") > 0) print line; skip = 1; next }
       /^\[/ { skip = 0 }
       !skip' "$1.base" >"$1" <<'INI'
model = runs/demo/vfm
pool = runs/demo/pool
val = data/demo/val.h5
out = runs/demo/meta
way = 5
shot = 1
query = 7
steps = 300
episodes-per-step = 2
val-every = 100
val-episodes = 300
checkpoint-every = 100
no-flip = true
distill-weight = 1
mask-select = random
temperature = 128

INI
  rm -f "$1.base"
}

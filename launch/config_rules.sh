# shellcheck shell=bash
# Sourced by launch/demo.sh and cluster/pipeline.sh: what the main job's stages read from an INI
# config, so that both run the same stages.
#   ini_value FILE SECTION KEY  the value of KEY in [SECTION] (last one wins), inline comments (# or ;
#                               after a blank) and surrounding blanks removed; empty when absent.
#   needs_bn_prior FILE         true unless [invert] sets w-bn to 0 (no BN-prior term: no prior).
#   masked_anchor_flags FILE    the masked meta-LoRA's extra flags: --distill-images E where
#                               [metatrain] distill-images is above E, the images an episode holds
#                               (way x (shot + query); metatrain's defaults 5, 1 and 15 where unset),
#                               else none: its anchor's glyphs go forward whole, so more would cost it
#                               the sparse tokens' saving (the demo preset: 160 -> 40).
ini_value() {
  awk -v want="$2" -v key="$3" '
    { line = $0; sub(/\r$/, "", line); sub(/(^|[ \t])[#;].*$/, "", line) }
    line ~ /^[ \t]*\[.*\][ \t]*$/ { s = line; gsub(/^[ \t]*\[[ \t]*|[ \t]*\][ \t]*$/, "", s); sec = s; next }
    sec == want && index(line, "=") {
      k = substr(line, 1, index(line, "=") - 1); v = substr(line, index(line, "=") + 1)
      gsub(/^[ \t]+|[ \t]+$/, "", k); gsub(/^[ \t]+|[ \t]+$/, "", v)
      if (k == key) val = v
    }
    END { print val }' "$1"
}
needs_bn_prior() {
  local w
  w=$(ini_value "$1" invert w-bn)
  [ -z "$w" ] || awk -v w="$w" 'BEGIN { exit (w + 0 == 0) }'
}
masked_anchor_flags() {
  local n way shot query e
  n=$(ini_value "$1" metatrain distill-images)
  way=$(ini_value "$1" metatrain way) shot=$(ini_value "$1" metatrain shot) query=$(ini_value "$1" metatrain query)
  e=$((${way:-5} * (${shot:-1} + ${query:-15})))
  if [ -n "$n" ] && [ "$n" -gt "$e" ]; then echo "--distill-images $e"; fi
}

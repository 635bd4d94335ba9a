#!/usr/bin/env bash
# The library's layers: every file of module M (src/M/, include/lorarecycle/M/) includes only
# headers of M and of the modules M may use, as the CMake link lines say (<build>/layers/allowed.txt,
# written at configure time by lorarec_module() in CMakeLists.txt). The build already refuses
# such an include in a module's own translation units (each compiles against a view of its allowed
# headers only); this also catches a header that only higher modules' files include.
# Usage: layering_check.sh ALLOWED_TXT
set -euo pipefail
ALLOWED="${1:?usage: layering_check.sh <build>/layers/allowed.txt}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
[ -s "$ALLOWED" ] || { echo "FAIL: $ALLOWED missing or empty (configure the build first)" >&2; exit 1; }
bad=0 n=0
while IFS=: read -r module deps; do
  deps=" ${deps//;/ } "
  for f in $(find "src/$module" "include/lorarecycle/$module" -name '*.cpp' -o -name '*.h' 2>/dev/null | sort); do
    n=$((n + 1))
    while IFS= read -r inc; do
      used=$(sed -E 's@^#include "(lorarecycle/)?([a-z_]+)/.*@\2@' <<<"$inc")
      if [[ "$deps" != *" $used "* ]]; then
        echo "FAIL: $f: $inc reaches module '$used'; $module may use only:$deps" >&2
        bad=$((bad + 1))
      fi
    done < <(grep -E '^#include "(lorarecycle/)?[a-z_]+/' "$f" || true)
  done
done <"$ALLOWED"
[ "$n" -gt 0 ] || { echo "FAIL: no files checked" >&2; exit 1; }
[ "$bad" = 0 ] || { echo "FAIL: $bad includes break the layering (see CMakeLists.txt, lorarec_module)" >&2; exit 1; }
echo "ok: $n files in $(wc -l <"$ALLOWED") modules include only the modules their link lines allow"

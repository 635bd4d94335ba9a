#!/usr/bin/env bash
# The C++ sources follow .clang-format (Google base, 120 columns). Tables that read better one entry
# per line (the CLI's option lists) sit between `// clang-format off` and `// clang-format on`.
# Fix: git ls-files '*.cpp' '*.h' '*.cu' | xargs clang-format -i --style=file
# The tree is formatted with Debian 12's clang-format 14 (launch/setup.sh installs it); another
# major version may format a few constructs differently and fail here.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
CF=$(command -v clang-format-14 || command -v clang-format || true)
[ -n "$CF" ] || { echo "FAIL: clang-format not found; bash launch/setup.sh installs it (Debian package clang-format)" >&2; exit 1; }
mapfile -t files < <(git ls-files '*.cpp' '*.h' '*.cu' 2>/dev/null || find src include tests bench -name '*.cpp' -o -name '*.h' -o -name '*.cu')
bad=()
for f in "${files[@]}"; do
  "$CF" --style=file "$f" | cmp -s - "$f" || bad+=("$f")
done
if [ ${#bad[@]} -gt 0 ]; then
  for f in "${bad[@]}"; do
    echo "--- $f (first differences):" >&2
    "$CF" --style=file "$f" | diff "$f" - | sed -n 1,8p >&2 || true
  done
  echo "FAIL: ${#bad[@]} of ${#files[@]} files do not follow .clang-format ($("$CF" --version)); fix: $(sed -n 4p "$0" | cut -c8-)" >&2
  exit 1
fi
echo "ok: ${#files[@]} C++ files follow .clang-format ($("$CF" --version))"

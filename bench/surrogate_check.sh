#!/usr/bin/env bash
# Do the surrogates look like the data to the VFM? A check of a pool that needs no meta-training.
#   bash bench/surrogate_check.sh POOL_DIR [POOL_DIR ...]
# For each pool: every surrogate and the real images of the same classes (the zoo's --data, read
# from the zoo manifest) go through the bare VFM (`lorarecycle embed`); then, on those features:
#   real-proto   % of surrogates whose nearest real-class prototype (mean feature of the class's
#                real images, over the pool's classes) is their own class; the same for the real
#                images themselves is printed once as the reference
#   sur->real    5-way episodes with ONE surrogate per class as support and 7 real images per class
#                as queries (nearest prototype, squared distance): does a surrogate teach its class?
#   cos-mean     mean cosine of a feature to the mean direction of the real features (real
#                images: ~0.9 here): on or off the data's region of the feature space
#   within/betw  mean cosine between two surrogates of one class / of different classes
#                (diversity: ~1 = all surrogates of a class alike)
# Scratch under ${BENCH_DIR:-/tmp/lorarec_surrogate_check}. Uses the zoo's classes only (no val or
# test class is read).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
source launch/env.sh
[ $# -ge 1 ] || { echo "usage: bash bench/surrogate_check.sh POOL_DIR [POOL_DIR ...]" >&2; exit 2; }
B=build/lorarecycle
PY=/usr/bin/python3
OUT=${BENCH_DIR:-/tmp/lorarec_surrogate_check}
mkdir -p "$OUT"
# Per pool: its surrogates (s<i>.h5) and the real images of its classes (real_<key>.h5, shared by
# the pools of one zoo and class set: written and embedded once per run).
declare -A REAL_DONE=()
PAIRS=()
i=0
for pool in "$@"; do
  [ -f "$pool/index.json" ] || { echo "surrogate_check: $pool/index.json missing (not a finished pool)" >&2; exit 2; }
  i=$((i + 1))
  info=$($PY - "$pool" "$OUT/s$i.h5" "$OUT" <<'PY'
import glob, hashlib, json, os, sys, h5py, numpy as np
pool, sur, out = sys.argv[1:]
ims, gc = [], []
for f in sorted(glob.glob(f"{pool}/lora_*.h5")):
    with h5py.File(f, "r") as h:
        ims.append(h["images"][:]); gc.append(h["global_class"][:])
gc = np.concatenate(gc)
with h5py.File(sur, "w") as h:
    h["images"] = np.concatenate(ims); h["labels"] = gc.astype(np.int64)
# The zoo's data: from the manifest of the zoo named in index.json.
idx = json.load(open(f"{pool}/index.json"))
data = json.load(open(idx["zoo"] + "/manifest.json"))["data"]
classes = np.unique(gc)
key = hashlib.sha1(f"{idx['model']}|{os.path.realpath(data)}|{classes.tolist()}".encode()).hexdigest()[:12]
if not os.path.exists(f"{out}/real_{key}.h5"):
    with h5py.File(data, "r") as z:
        lab = z["labels"][:]
        sel = np.where(np.isin(lab, classes))[0]
        with h5py.File(f"{out}/real_{key}.h5.tmp", "w") as h:
            h["images"] = z["images"][sel]; h["labels"] = lab[sel].astype(np.int64)
    os.replace(f"{out}/real_{key}.h5.tmp", f"{out}/real_{key}.h5")
print(idx["model"], key)
PY
)
  read -r model key <<<"$info"
  todo=("s$i")
  [ -n "${REAL_DONE[$key]+x}" ] || { todo+=("real_$key"); REAL_DONE[$key]=1; }
  for s in "${todo[@]}"; do
    $B embed --model "$model" --images "$OUT/$s.h5" --out "$OUT/${s}_f.h5" >"$OUT/embed.log" 2>&1 \
      || { cat "$OUT/embed.log"; exit 1; }
  done
  PAIRS+=("$pool=$OUT/s${i}_f.h5=$OUT/real_${key}_f.h5")
done
$PY - "${PAIRS[@]}" <<'PY'
import sys, h5py, numpy as np
def load(p):
    with h5py.File(p, "r") as h: return h["features"][:], h["labels"][:]
def protos(R, yr, cls): return np.stack([R[yr == c].mean(0) for c in cls])
def nearest(X, P, cls): return np.asarray(cls)[((X[:, None] - P[None]) ** 2).sum(-1).argmin(1)]
def cosines(X, y):
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True); C = Xn @ Xn.T
    same = y[:, None] == y[None]; off = ~np.eye(len(y), dtype=bool)
    return C[same & off].mean(), C[~same].mean()
print(f"{'pool':40s} {'images':>6s} {'real-proto':>10s} {'sur->real':>9s} {'cos-mean':>8s} {'within':>6s} {'betw':>6s}")
shown = set()
for arg in sys.argv[1:]:
    pool, sur_f, real_f = arg.rsplit("=", 2)
    rng = np.random.default_rng(0)  # the same episodes whatever the order of the pools
    S, ys = load(sur_f); R, yr = load(real_f)
    cls = sorted(set(ys.tolist())); P = protos(R, yr, cls)
    m = R.mean(0); m /= np.linalg.norm(m)
    acc = []
    for _ in range(600):
        pick = rng.choice(cls, min(5, len(cls)), replace=False)
        sup = np.stack([S[ys == c][rng.integers((ys == c).sum())] for c in pick])
        q = np.concatenate([R[yr == c][rng.permutation((yr == c).sum())[:7]] for c in pick])
        ql = np.repeat(np.arange(len(pick)), 7)
        acc.append((((q[:, None] - sup[None]) ** 2).sum(-1).argmin(1) == ql).mean())
    w, b = cosines(S, ys)
    if real_f not in shown:
        shown.add(real_f)
        wr, br = cosines(R, yr)
        print(f"{'(real images of these classes)':40s} {len(R):6d} {100 * (nearest(R, P, cls) == yr).mean():10.1f} {'':>9s} "
              f"{(R @ m / np.linalg.norm(R, axis=1)).mean():8.3f} {wr:6.3f} {br:6.3f}")
    print(f"{pool:40s} {len(S):6d} {100 * (nearest(S, P, cls) == ys).mean():10.1f} {100 * np.mean(acc):9.1f} "
          f"{(S @ m / np.linalg.norm(S, axis=1)).mean():8.3f} {w:6.3f} {b:6.3f}")
PY

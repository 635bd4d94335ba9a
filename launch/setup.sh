#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for lorarecycle and builds it. Idempotent: installs only
# missing apt packages, reconfigures/rebuilds incrementally (ccache).
#
#   bash launch/setup.sh [--build-dir DIR] [--build-type Release|RelWithDebInfo|Debug] [--no-tests]
#                        [-- extra cmake args]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=build
BUILD_TYPE=Release
TESTS=ON
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) BUILD_DIR=$2; shift 2 ;;
    --build-type) BUILD_TYPE=$2; shift 2 ;;
    --no-tests) TESTS=OFF; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

# Build: compilers, CMake, ccache, clang-format (the format check). Libraries: LibTorch (CPU), Open MPI, HDF5, Boost.PO, JSON,
# GoogleTest, libpng/libjpeg (predict), CBLAS (libblas-dev: the attention's float products). Runtime: OpenBLAS (the
# reference BLAS is ~10x slower), h5dump/h5ls.
# Tests: Debian's python3 with torch/numpy/h5py for the independent reference.
# Benchmark data (data_tools/): font packages (the glyphs), Fashion-MNIST, PIL and fontTools;
# the main job's report: matplotlib.
PACKAGES=(build-essential cmake ccache pkg-config git bc clang-format
  libtorch-dev libopenblas0-pthread libblas-dev
  libopenmpi-dev openmpi-bin
  libhdf5-dev hdf5-tools zlib1g-dev libpng-dev libjpeg-dev
  libboost-program-options-dev nlohmann-json3-dev libgtest-dev
  python3-torch python3-torchvision python3-numpy python3-h5py python3-pil python3-fonttools python3-matplotlib
  dataset-fashion-mnist fonts-dejavu-core fonts-dejavu-extra fonts-freefont-ttf fonts-liberation2 fonts-noto-core
  fonts-noto-cjk fonts-arphic-ukai fonts-arphic-uming fonts-wqy-microhei fonts-wqy-zenhei)
missing=()
for p in "${PACKAGES[@]}"; do
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "setup: all apt packages present"
fi

export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}
start=$(date +%s)
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" -DLORAREC_BUILD_TESTS="$TESTS" "${EXTRA[@]}" >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
echo "setup: built in $(( $(date +%s) - start )) s -> $BUILD_DIR/lorarecycle"

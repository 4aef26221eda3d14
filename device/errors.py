"""The device package's user-facing error: names the bad value and what was expected."""


class DeviceError(Exception):
    """Bad input to `edgegen device`, `plan` or `bench`: unknown board, nonsense number, missing model file."""

    exit_code = 2

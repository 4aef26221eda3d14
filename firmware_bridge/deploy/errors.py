"""Errors of deployment: a machine-readable reason code, a message naming the bad value, and the numbers behind it."""
from __future__ import annotations

import enum
from typing import Any


class DeployCode(enum.StrEnum):
    """Reason codes carried in deploy status messages and `edgegen install --json`; stable, part of the protocol."""

    BAD_SIGNATURE = "bad_signature"  # the manifest's signature does not verify with the trusted key
    UNTRUSTED_KEY = "untrusted_key"  # signed by a key other than the one the device trusts
    DOWNGRADE = "downgrade"  # version not above the last version the device trusted for that name
    EXPIRED = "expired"  # the manifest's expiry has passed
    WONT_FIT = "wont_fit"  # the planner's need exceeds the device's free memory
    BAD_MANIFEST = "bad_manifest"  # a field missing, of the wrong type or out of range
    SIZE_MISMATCH = "size_mismatch"  # the file is not the size the manifest states
    HASH_MISMATCH = "hash_mismatch"  # a block or the whole file does not hash to the manifest's sha256
    GOLDEN_FAILED = "golden_failed"  # the model does not reproduce the manifest's golden answer
    TOO_SLOW = "too_slow"  # decode speed below the required share of the measured baseline
    MEMORY_OVER_PLAN = "memory_over_plan"  # peak RSS above what the plan predicted
    LOAD_FAILED = "load_failed"  # the runtime refused the file
    CRASHED_IN_PROBATION = "crashed_in_probation"  # the service kept dying before it committed the new model
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    NO_SPACE = "no_space"  # the state folder's disk cannot hold the partial file
    BAD_STATE = "bad_state"  # the state folder is unreadable, or a slot operation came out of order


class DeployError(Exception):
    """A deployment refused or failed; `code` is a DeployCode value, `details` the numbers that decided it."""

    exit_code = 2

    def __init__(self, code: DeployCode | str, message: str, details: dict[str, Any] | None = None):
        super().__init__(f"{code}: {message}")
        self.code = str(code)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def to_dict(self) -> dict[str, Any]:
        """The error as JSON-ready data: {"code", "message", "details"}."""
        return {"code": self.code, "message": self.message, "details": self.details}

"""Where a device agent keeps its state (the answers it remembers across restarts): the XDG state folder."""
from __future__ import annotations

import os
from pathlib import Path


def default_state_dir(device_id: str) -> Path:
    """$XDG_STATE_HOME/edgegen/<device-id>, or ~/.local/state/edgegen/<device-id> (XDG Base Directory spec)."""
    base = os.environ.get("XDG_STATE_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"  # the spec ignores relative paths
    return root / "edgegen" / device_id

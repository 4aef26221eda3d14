"""edgegen models package."""

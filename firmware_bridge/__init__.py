"""edgegen firmware_bridge package."""

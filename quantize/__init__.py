"""edgegen quantize package."""

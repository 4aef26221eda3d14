"""edgegen device package."""

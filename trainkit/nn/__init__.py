"""Building blocks shared by the architectures: activations (and, later, init and norms)."""

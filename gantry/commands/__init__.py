"""Sub-commands of ``gantry`` (the root is gantry.cli)."""

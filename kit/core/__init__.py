"""Configuration, checkpoints, hardware and errors: what every other layer builds on."""

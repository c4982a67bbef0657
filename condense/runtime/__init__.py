"""Layer 1 (core) runtime, what every layer shares while it runs: errors, derived randomness, progress bars,
process performance settings, executors and the optional dependencies."""

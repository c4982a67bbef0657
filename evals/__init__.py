"""Layer 4: training fresh networks on synthetic sets; executors; reports (see docs/ARCHITECTURE.md)."""

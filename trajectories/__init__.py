"""Layer 2: the expert-trajectory store and the expert recorder (see docs/ARCHITECTURE.md).

``open_store(folder)`` reads a store; ``trajectories.record.record_store`` writes one;
``trajectories.mtt_import.import_mtt`` converts MTT replay buffers.
"""
from trajectories.store import TrajectoryStore, open_store

__all__ = ["TrajectoryStore", "open_store"]

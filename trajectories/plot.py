"""Pictures of a trajectory store: what users look at before they read."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from condense.runtime.files import write_figure
from trajectories.store import TrajectoryStore


def plot_store(store: TrajectoryStore, path: str | os.PathLike) -> Path:
    """PNG with, per expert: test accuracy per epoch, distance from init ||θ_e − θ_0||,
    and step length ||θ_e − θ_{e−1}|| (how far each epoch moves: smooth experts move less
    early on). Experts are read one at a time."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3)
    epochs = np.arange(store.epochs + 1)
    for i in range(len(store)):
        traj = store.expert(i).double()
        dist = (traj - traj[0]).norm(dim=1).numpy()
        steps = (traj[1:] - traj[:-1]).norm(dim=1).numpy()
        label = f"expert {store.indices[i]}"
        axes[0].plot(epochs, 100 * store.test_acc(i), marker=".", label=label)
        axes[1].plot(epochs, dist, marker=".", label=label)
        axes[2].plot(epochs[1:], steps, marker=".", label=label)
    for ax, title in zip(axes, ("test accuracy (%)", "distance from init ‖θₑ − θ₀‖", "epoch step ‖θₑ − θₑ₋₁‖")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if len(store) <= 10:
        axes[0].legend(fontsize=7)
    meta = store.meta
    fig.suptitle(f"{meta['arch']} on {meta['dataset']}: {len(store)} experts, regulariser "
                 f"{meta.get('regularizer', {}).get('flat', 'none')}"
                 f"{', smooth' if meta.get('regularizer', {}).get('smooth') else ''}", fontsize=10)
    fig.tight_layout()
    return write_figure(path, fig, dpi=100)

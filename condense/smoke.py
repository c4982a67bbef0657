"""The smoke job: random real subsets of a dataset, saved as synthetic sets, shown and evaluated.

It exercises the whole foundation on real data (loading, class-balanced selection,
the synthetic-set file, PNG grids, the training loop and evaluation) and gives the
random-real baseline every distillation method is compared with.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .config import to_dict
from .data import class_balanced_indices, load_dataset
from .errors import ConfigError
from .stats import summarize
from .synset import SynSet, real_subset
from .train import TrainProtocol, evaluate_synset
from .viz import save_grid


@dataclass
class SmokeConfig:
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    download: bool = False
    ipc: list[int] = field(default_factory=lambda: [1, 10])
    arch: str = "convnet:width=32"
    epochs: int = 300
    runs: int = 3
    seed: int = 0
    dsa: bool = True
    out: str = "runs/smoke"
    device: str | None = None

    def validate(self) -> None:
        if not self.ipc or min(self.ipc) <= 0:
            raise ConfigError(f"ipc values must be positive, got {self.ipc}")
        if self.runs <= 0:
            raise ConfigError(f"runs must be positive, got {self.runs}")


def random_subset_synset(ds: Any, ipc: int, seed: int) -> SynSet:
    """A class-balanced random subset of the training set (the random-real baseline), as a set."""
    return real_subset(ds, class_balanced_indices(ds.y_train, ipc, seed), "random",
                       config={"method": "random", "ipc": ipc, "seed": seed}, provenance={"seed": seed})


def run_smoke(cfg: SmokeConfig, device: torch.device, progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Build, save, show and evaluate a random subset per IPC; write results.json. Returns its rows.

    Run r of IPC k evaluates the subset drawn with seed ``cfg.seed + r`` (so the runs
    differ in data as well as init, as the reference's random baseline does) and
    trains with (seed, run) = (cfg.seed, r).
    """
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ds = load_dataset(cfg.dataset, cfg.data_root, download=cfg.download)
    progress(f"loaded {cfg.dataset}: {len(ds.y_train)} train / {len(ds.y_val)} val / {len(ds.y_test)} test "
             f"images in {time.perf_counter() - t0:.1f}s")
    protocol = TrainProtocol(epochs=cfg.epochs, dsa=cfg.dsa)
    rows = []
    for ipc in cfg.ipc:
        accs = []
        from tqdm import tqdm

        for r in tqdm(range(cfg.runs), desc=f"random IPC {ipc}", unit="run", leave=False):
            s = random_subset_synset(ds, ipc, cfg.seed + r)
            if r == 0:
                path = s.save(out / f"random_ipc{ipc}.h5")
                save_grid(s.to_pixels(), s.classes, out / f"random_ipc{ipc}.png", class_names=ds.info.class_names,
                          title=f"random real, {cfg.dataset}, IPC {ipc}")
            accs.append(evaluate_synset(s, cfg.arch, protocol, cfg.seed, test=(ds.x_test, ds.y_test), run=r,
                                        device=device))
        stats = summarize([100 * a for a in accs])
        rows.append({"synset": str(path), "method": "random", "ipc": ipc, "arch": cfg.arch,
                     "accs": [100 * a for a in accs], **stats, "storage_bytes": s.storage_bytes(),
                     "protocol": to_dict(protocol), "subset_seeds": [cfg.seed + r for r in range(cfg.runs)]})
        progress(f"random IPC {ipc:>3}: {stats['mean']:.2f} ± {stats['std']:.2f} % "
                 f"(95% CI ± {stats['ci95']:.2f}, {cfg.runs} runs, {cfg.epochs} epochs, {cfg.arch})")
    (out / "results.json").write_text(json.dumps({"results": rows, "config": to_dict(cfg),
                                                  "wall_s": time.perf_counter() - t0}, indent=2))
    return rows

"""Layer 4: evaluation only: training fresh networks on synthetic sets, statistics, reports (see docs/ARCHITECTURE.md).

    from evals import EvalConfig, run_eval
    doc = run_eval(EvalConfig(archs=["convnet:width=32"], runs=3, epochs=300), ["runs/fmnist/dm_ipc1.h5"])
"""
from .grid import EvalConfig
from .harness import run_eval

__all__ = ["EvalConfig", "run_eval"]

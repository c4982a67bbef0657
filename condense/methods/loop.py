"""The synthesis loop every method shares: iterations, NaN guard, checkpoint/resume, progress, logs.

A method plugs in as a :class:`Synthesizer`: it owns its learnable tensors and their
optimisers, fills their ``.grad`` for iteration ``it`` (all randomness derived from
``(seed, it, ...)``), and can turn its state into a :class:`~condense.synset.SynSet`.
The loop does the rest, identically for every method:

- **NaN guard**: a step whose loss or gradients are not finite is skipped; a step that
  leaves a learnable tensor non-finite (or the learned lr out of range) is rolled back
  to the state before it. Both are logged; after ``max_bad_steps`` bad steps in a row
  the run stops with a clear message (the last good state is saved). With
  ``skip_loss_above`` (DATM's threshold) an iteration whose loss exceeds it is skipped
  and logged but is not a bad step: DATM skips such iterations as a matter of course
  (early, hard starts), so they neither count toward ``max_bad_steps`` nor break a
  streak of bad ones.
- **No false success**: a run none of whose iterations was accepted (every step skipped
  or rolled back, resumed segments included) fails with one line naming the cause and
  writes nothing to ``out``: its set would be the initial one presented as distilled.
- **Checkpoint/resume**: every ``checkpoint_every`` iterations the set is written to
  ``out`` and the full state (tensors, optimiser momenta, iteration, accepted steps) to
  the run folder; rerunning the same command continues from there and gives the same set
  as an uninterrupted run, because iteration ``it`` depends only on (state, seed, it). A
  finished checkpoint whose set is missing from ``out`` (or replaced by another) writes
  it again; one of more iterations than asked is kept, and said so.
- **Run folder** ``<out>.run/``: ``config.json``, ``env.json`` (versions, git hash),
  ``metrics.csv`` (one row per iteration), ``grid_XXXXXX.png`` at checkpoints, and the
  checkpoint itself.
- **Evaluation** every ``eval_every`` iterations through a callback (methods never
  import the evaluation harness).
- **Observers**: a per-iteration ``callback(iteration, row, current_set)`` (a notebook's live
  plot) and loggers (:mod:`condense.loggers`: TensorBoard, wandb) beside metrics.csv, given to
  :func:`synthesize` or, through a method's runner, by :func:`observed`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch

from ..data import dataset_info
from ..config.parts import Loop
from ..loggers import CsvLogger, Logger
from ..runtime.errors import CondenseError
from ..runtime.files import check_torch_file, clear_temporaries, regular_file, run_subfolder, write_text, write_torch
from ..synset import SynSet, load_synset
from ..version import environment
from ..plots import save_grid

CHECKPOINT = "checkpoint.pt"


class Synthesizer(Protocol):
    """A synthesis method as the loop sees it."""

    def learnables(self) -> dict[str, torch.Tensor]:
        """The leaf tensors being optimised (e.g. images, log_lr, label logits)."""

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Their optimisers, by name (state is checkpointed)."""

    def compute_grads(self, it: int) -> dict[str, float]:
        """Fill ``.grad`` of the learnables for iteration ``it``; return metrics incl. ``loss``."""

    def after_step(self, it: int) -> None:
        """Anything done after a successful step (EMA of the set, clamping...)."""

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Further tensors to checkpoint (e.g. the EMA images)."""

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None: ...

    def synset(self, it: int) -> SynSet:
        """The current synthetic set (what is saved and evaluated)."""

    def validate_state(self) -> str | None:
        """A reason the state is unusable (e.g. learned lr out of range), or None."""


class ImageSynthesizer:
    """Defaults of :class:`Synthesizer` for methods that learn ``self.images`` with the optimisers
    ``self.opts`` and keep no further state (dm, dam, gm; frepo overrides what it adds)."""

    images: torch.Tensor
    opts: dict[str, torch.optim.Optimizer]

    def learnables(self) -> dict[str, torch.Tensor]:
        return {"images": self.images}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.opts

    def after_step(self, it: int) -> None:
        pass

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def validate_state(self) -> str | None:
        return None

    def synset(self, it: int) -> SynSet:
        """The images with their classes as hard labels, the config (canonical ``self.arch``) and
        where the images started (``self.indices`` into the training split, or None)."""
        return SynSet.hard(self.images.detach().cpu().clone(), self.classes.clone(), dataset=self.ds.info.name,
                           num_classes=self.ds.info.num_classes, method=self.method_name, transform=self.ds.transform,
                           data=dict(self.ds.meta),
                           config={"method": self.method_name, **asdict(self.cfg), "arch": self.arch},
                           provenance={"seed": self.cfg.seed, "iteration": it,
                                       "init_indices": None if self.indices is None else self.indices.tolist()})


def identity_hash(config: dict[str, Any]) -> str:
    """Hash of a run's identity: what must match for a checkpoint to be resumed.

    A setting left at None (unset) is not part of it, so adding an optional setting to a
    method keeps the checkpoints of runs that never used it resumable.
    """
    ignore = {"iters", "checkpoint_every", "eval_every", "eval_epochs", "out", "device", "data_root"}
    identity = {k: v for k, v in config.items() if k not in ignore and v is not None}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def same_identity(key: str | None, config: dict[str, Any]) -> bool:
    """Whether a stored identity ``key`` belongs to a run of ``config``."""
    return key == identity_hash(config)


def _finite(t: torch.Tensor | None) -> bool:
    return t is None or bool(torch.isfinite(t).all())


def run_folder(out: str | os.PathLike) -> Path:
    """The run folder of the set file ``out``: ``<out>.run/``."""
    out = Path(out)
    return out.with_name(out.name + ".run")


class Run:
    """The run folder of one synthesis: config, environment, metrics, grids, checkpoint."""

    def __init__(self, out: str | os.PathLike, config: dict[str, Any]):
        self.out = Path(out)
        self.folder = run_folder(out)
        self.config = config
        self.key = identity_hash(config)
        run_subfolder(self.folder)
        clear_temporaries(self.folder)  # its writer was killed; the run's lock is ours now
        self.csv = CsvLogger(self.folder / "metrics.csv")
        # steps accepted before this segment; None: a checkpoint written before they were counted
        self.accepted: int | None = 0

    def save_checkpoint(self, method: Synthesizer, it: int, accepted: int | None = None) -> None:
        state = {"key": self.key, "iteration": it, "accepted": accepted,
                 "learnables": {k: v.detach().cpu() for k, v in method.learnables().items()},
                 "optimizers": {k: o.state_dict() for k, o in method.optimizers().items()},
                 "extra": {k: v.detach().cpu() for k, v in method.extra_state().items()}}
        write_torch(self.folder / CHECKPOINT, state)

    def _record(self) -> None:
        """Write config.json and env.json: only once the folder is known to be this run's, so a
        refused resume leaves the other run's record as it was."""
        write_text(self.folder / "config.json", json.dumps(self.config, indent=1, sort_keys=True, default=str))
        write_text(self.folder / "env.json", json.dumps(environment(), indent=1))

    def load_checkpoint(self, method: Synthesizer) -> int:
        """Restore ``method`` from the run folder; returns the iteration to continue from (0: fresh)."""
        path = self.folder / CHECKPOINT
        if not path.exists() and not path.is_symlink():
            self._record()
            return 0
        regular_file(path, "checkpoint", follow=False)
        try:
            check_torch_file(path, "checkpoint")
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for corrupt files
            raise CondenseError(f"{path} is corrupt ({type(e).__name__}); delete it to start over") from None
        if not isinstance(state, dict) or not same_identity(state.get("key"), self.config):
            raise CondenseError(f"{path} belongs to a run with other settings; delete {self.folder} or "
                                "choose another --out")
        try:
            with torch.no_grad():
                for k, v in method.learnables().items():
                    v.copy_(state["learnables"][k])
            for k, o in method.optimizers().items():
                o.load_state_dict(state["optimizers"][k])
            method.load_extra_state(state["extra"])
            iteration = int(state["iteration"])
            self.accepted = None if state.get("accepted") is None else int(state["accepted"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise CondenseError(f"{path} is corrupt ({type(e).__name__}); delete it to start over") from None
        self._record()
        return iteration


IterationCallback = Callable[[int, dict[str, Any], Callable[[], SynSet]], None]


@dataclass(frozen=True)
class Observers:
    """Who hears about each iteration besides metrics.csv (see :func:`observed`)."""

    callback: IterationCallback | None = None
    loggers: tuple[Logger, ...] = ()


_OBSERVERS: ContextVar[Observers] = ContextVar("condense_synthesis_observers", default=Observers())


@contextmanager
def observed(callback: IterationCallback | None = None, loggers: Sequence[Logger] = ()) -> Iterator[None]:
    """Within the block, every :func:`synthesize` not given its own reports each iteration to
    ``callback`` and ``loggers``. This is how the Python API and ``--log`` reach the loop through
    any method's runner, built in or a plugin, whose signature ``run(cfg, device, *, progress,
    bars, evaluate)`` stays as it is."""
    token = _OBSERVERS.set(Observers(callback, tuple(loggers)))
    try:
        yield
    finally:
        _OBSERVERS.reset(token)


def synthesize(method: Synthesizer, loop: Loop, out: str | os.PathLike, config: dict[str, Any],
               *, progress: Callable[[str], None] = print, bars: bool = True,
               evaluate: Callable[[SynSet], float] | None = None) -> SynSet:
    """Run ``method`` for ``loop.iters`` iterations (resuming from the run folder if any),
    saving the set to ``out``. ``loop`` is the method's configuration (any config composed
    with the :class:`~condense.config.parts.Loop` part). Returns the final set.

    After each iteration (and its checkpoint, if one is due) ``callback(it, row, current)`` is
    called with the 0-based iteration, its metrics row (what metrics.csv gets: ``loss``,
    ``seconds``, ``event``, ...) and ``current()``, which makes the set after ``it + 1``
    iterations only when called (during the callback). ``loggers`` (:mod:`condense.loggers`)
    get every row and each checkpoint's grid, and are closed at the end. Both come from the
    enclosing :func:`observed` block, if any.
    """
    observers = _OBSERVERS.get()
    callback, loggers = observers.callback, observers.loggers
    run = Run(out, config)
    start = run.load_checkpoint(method)
    if start >= loop.iters:
        for logger in (run.csv, *loggers):
            logger.close()
        return _finished(method, run, out, start, loop.iters, progress)
    if start:
        progress(f"resuming {out} at iteration {start}")
    from ..runtime.progress import bar as progress_bar

    bad_in_a_row, accepted = 0, 0  # accepted: steps taken in this segment
    # what the refused steps were (an earlier segment's are unknown)
    kinds: set[str] = set() if start == 0 else {"?"}
    learn, opts = method.learnables(), method.optimizers()
    bar = progress_bar(total=loop.iters, initial=start, desc=f"synth {config.get('method', '')}", unit="it", disable=not bars)
    t_last, it = time.perf_counter(), start
    try:
        for it in range(start, loop.iters):
            for v in learn.values():
                v.grad = None
            metrics = method.compute_grads(it)
            loss = metrics.get("loss", float("nan"))
            event, bad = "", True
            if not math.isfinite(loss) or not all(_finite(v.grad) for v in learn.values()):
                event = "skipped: non-finite loss or gradient"
            elif loop.skip_loss_above is not None and loss > loop.skip_loss_above:
                event, bad = f"skipped: loss {loss:.4g} above {loop.skip_loss_above}", False
            else:
                before = {k: v.detach().clone() for k, v in learn.items()}
                before_opt = {k: _clone_state(o.state_dict()) for k, o in opts.items()}
                for o in opts.values():
                    o.step()
                reason = None if all(_finite(v) for v in learn.values()) else "non-finite values"
                reason = reason or method.validate_state()
                if reason:
                    with torch.no_grad():
                        for k, v in learn.items():
                            v.copy_(before[k])
                    for k, o in opts.items():
                        o.load_state_dict(before_opt[k])
                    event = f"rolled back: {reason}"
                else:
                    method.after_step(it)
                    accepted += 1
            total = None if run.accepted is None else run.accepted + accepted
            if event:
                progress(f"iteration {it}: {event}")
                kinds.add(event.partition(": ")[0])
            if event and bad:
                bad_in_a_row += 1
                if bad_in_a_row >= loop.max_bad_steps:
                    if total == 0:
                        raise CondenseError(_no_update(it + 1, event, kinds,
                                                       f" (stopped after {loop.max_bad_steps} bad steps in a row)"))
                    _save(method, run, out, it, total)
                    raise CondenseError(f"{loop.max_bad_steps} bad steps in a row at iteration {it} ({event}); "
                                        f"the last good set is in {out}; lower the learning rates")
            elif not event:
                bad_in_a_row = 0
            now = time.perf_counter()
            row = {"iteration": it, **metrics, "seconds": now - t_last, "event": event}
            if "inner_images" in metrics:  # images pushed through the student per second
                row["images_per_s"] = metrics["inner_images"] / max(now - t_last, 1e-9)
            t_last = now
            done = it + 1
            if loop.eval_every and evaluate is not None and done % loop.eval_every == 0:
                row["eval_acc"] = evaluate(method.synset(done))
                progress(f"iteration {done}: eval accuracy {100 * row['eval_acc']:.2f}%")
            for logger in (run.csv, *loggers):
                logger.metrics(it, row)
            bar.update(1)
            bar.set_postfix({k: f"{row[k]:.4g}" for k in ("loss", "lr", "images_per_s") if k in row})
            if done == loop.iters and total == 0:
                raise CondenseError(_no_update(done, event, kinds))
            # while nothing was accepted, no set and no checkpoint: a rerun with other settings
            # (the fix the failure asks for) must not find this run's checkpoint in its way
            if (done % loop.checkpoint_every == 0 or done == loop.iters) and total != 0:
                grid = _save(method, run, out, done, total)
                for logger in loggers:
                    logger.image(done, grid)
            if callback is not None:
                callback(it, row, partial(method.synset, done))
    finally:
        bar.close()
        for logger in (run.csv, *loggers):
            logger.close()
    return method.synset(loop.iters)


def _no_update(n: int, event: str, kinds: set[str], why: str = "") -> str:
    """The one line of a run none of whose ``n`` iterations was accepted: ``event`` was the last
    one's, ``kinds`` those seen (skipped, rolled back; "?": an earlier segment's, unknown)."""
    kind, _, reason = event.partition(": ")
    if "learned lr" in reason:
        hint = "lower --lr-lr"
    elif kind == "rolled back":
        hint = "lower the learning rates"
    elif reason.startswith("loss"):  # above DATM's threshold
        hint = "raise --skip-loss-above"
    else:
        hint = "check the inputs (experts, teacher, data) for non-finite values, or lower the learning rates"
    every = f"{kind} ({reason})" if kinds == {kind} else f"skipped or rolled back (last: {kind}, {reason})"
    return f"no iteration was accepted in {n}{why}: every step was {every}; nothing was written; {hint}"


def _finished(method: Synthesizer, run: Run, out: str | os.PathLike, done: int, asked: int,
              progress: Callable[[str], None]) -> SynSet:
    """A checkpoint of ``done`` >= ``asked`` iterations: its set, at ``out`` as it says."""
    s = method.synset(done)
    more = f", more than the {asked} asked" if done > asked else ""
    if _holds(out, s):
        if more:
            progress(f"{out} holds {done} iterations{more}: kept it; delete {run.folder} to start over")
        else:
            progress(f"{out}: already synthesized ({done} iterations)")
        return s
    s.save(out)
    progress(f"restored {out} from its finished checkpoint ({done} iterations{more})"
             + (f"; delete {run.folder} to start over" if more else ""))
    return s


def _holds(out: str | os.PathLike, s: SynSet) -> bool:
    """Whether the file ``out`` is the set ``s`` of this run's checkpoint: same method, iteration and
    seed, and the same images (not the config: its names changed between versions, the images
    the checkpoint restores did not)."""
    if not Path(out).is_file():
        return False
    try:
        held = load_synset(out)
    except CondenseError:
        return False
    return (held.method == s.method and held.provenance.get("iteration") == s.provenance.get("iteration")
            and held.provenance.get("seed") == s.provenance.get("seed")
            and held.images.shape == s.images.shape and torch.equal(held.images, s.images.float())
            and torch.equal(held.classes.long(), s.classes.long()))


def _save(method: Synthesizer, run: Run, out: str | os.PathLike, it: int, accepted: int | None = None) -> Path:
    """Write the set, its grid (returned) and the checkpoint after ``it`` iterations."""
    s = method.synset(it)
    s.save(out)
    grid = save_grid(s.to_pixels(), s.classes, run.folder / f"grid_{it:06d}.png",
                     class_names=dataset_info(s.dataset).class_names,
                     title=f"{s.method}, {s.dataset}, {s.ipc_label}, iteration {it}")
    run.save_checkpoint(method, it, accepted)
    return grid


def _clone_state(state: Any) -> Any:
    """A deep copy of an optimizer state_dict (tensors cloned), for rollback."""
    if isinstance(state, torch.Tensor):
        return state.clone()
    if isinstance(state, dict):
        return {k: _clone_state(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_clone_state(v) for v in state]
    return state

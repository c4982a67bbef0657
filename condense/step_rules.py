"""Step rules for expert training: SAM, GSAM (FTD's flat experts) and smooth experts (AST).

Each factory returns a :class:`condense.train.StepRule`,
``rule(model, batch, loss_fn, optimizer, epoch) -> float``, for
``condense.train.train_model(..., step=rule)``. A rule does its forward/backward
passes, calls ``optimizer.step()`` exactly once, and returns the *label loss*
``loss_fn(model(batch.x), batch.y)`` at the weights the step started from (before any
perturbation, loss scaling or penalty), so training-loss curves are comparable across
plain, flat and smooth experts. :class:`ExpertRegularizer` is the typed, validated
switchboard the expert recorder stores in its metadata.

Notation: w = the parameters the optimizer holds (those that receive a gradient),
g = ∇L(w) over all of them as one vector, ‖·‖ = global L2 norm, eps = 1e-12,
⊙ = elementwise product. Weight decay and momentum are the optimizer's own
(``torch.optim.SGD``): they act on the final gradient the rule leaves in ``p.grad``,
exactly as with the references' base optimizers.

SAM (Foret et al., ICLR 2021, "Sharpness-Aware Minimization for Efficiently
Improving Generalization")::

    e   = rho * g / (‖g‖ + eps)                         (adaptive: rho * w⊙w⊙g / (‖|w|⊙g‖ + eps))
    g_p = ∇L(w + e)
    w  <- w; optimizer step with gradient g_p

GSAM (Zhuang et al., ICLR 2022, "Surrogate Gap Guided Sharpness-Aware
Minimization"; official code juntang-zhuang/GSAM ``gsam/gsam.py``, vendored unchanged
in its math by FTD as AngusDujw/FTD-distillation ``buffer/gsam/gsam.py``)::

    e, g_p as in SAM (g = ∇L(w) is the original-loss gradient)
    cos   = <g, g_p> / (‖g_p‖ ‖g‖ + eps)
    g_par = cos * ‖g‖ * g_p / (‖g_p‖ + eps)              (≈ projection of g on g_p)
    g_orth = g - g_par                                   (part of g orthogonal to g_p)
    update gradient = g_p - alpha * g_orth

With alpha = 0 GSAM is exactly SAM. The eps placement follows the reference, so the
result equals g_p - alpha * (g - <g, g_p>/‖g_p‖² g_p) up to terms of relative size
1e-12.

What FTD does (AngusDujw/FTD-distillation at HEAD 711532a, ``buffer/buffer_FTD.py``,
``buffer/run_buffer.sh`` and ``buffer/gsam/``, verified): GSAM with
``--rho_max = --rho_min = 0.01`` and ``--alpha 0.4`` (the argparse default; the
script does not override it). rho comes
from ``ProportionScheduler`` (``buffer/gsam/scheduler.py``), which moves rho in
proportion to the lr between (min_lr, rho_min) and (max_lr, rho_max); FTD passes
max_lr = min_lr = lr_teacher and a ``StepLR`` with gamma = 1 (the lr never changes;
the lr-decay block is commented out), so rho is the constant 0.01 for the whole run.
We implement a constant rho and no lr-proportional rho schedule. FTD's
``--adaptive`` flag is declared ``type=bool, default=True``, so it is always on
(``bool("False")`` is True): FTD's experts use the *adaptive* perturbation (ASAM-style,
Kwon et al. 2021, with T_w = |w|): e = rho * w⊙w⊙g / (‖|w|⊙g‖ + eps), while the GSAM
decomposition still uses plain Euclidean norms. We offer it as ``adaptive=True``
(default False, i.e. the papers' plain SAM/GSAM). FTD's other expert settings
(for the preset, not this module): lr 0.01 constant, momentum 0 and weight decay 0
(the defaults of ``--mom`` and ``--l2``), 50 epochs, DSA, batch 256.

Smooth experts (Shen et al., "Efficient Dataset Distillation through Alignment with
Smooth and High-Quality Expert Trajectories" = AST; repository
shenjiyuan123/AST-Alignment-with-Smooth-Expert, ``buffer.py`` and ``utils.py``
functions ``epoch_flat`` / ``epoch_gp`` at HEAD 8030869, both files last changed in
22873a86; verified)::

    s(e)   = 0.5 + 0.05 e  for epochs e = 0..9 (0.5, 0.55, ..., 0.95), 1.0 from epoch 10 on
    GP(w)  = mean_{b,h,w} ( ‖ ∂(Σ_{b,k} f_w(x_clean)_{b,k}) / ∂x_clean [b, :, h, w] ‖_2 − 1 )²
    loss   = s(e) * label_loss(f_w(x_aug), y) + λ * GP(w),   λ = gp_weight (AST: LAMBDA = 2)

Facts from AST's code: the schedule list has ten entries and is used while
``e < len(list)``; afterwards ``buffer.py`` calls the plain ``epoch`` (no gp) or
``epoch_gp(loss_decay=1)`` (gp): the scale is 1.0 from epoch 10 on. Without
``--loss_decay`` the list is empty (scale 1 always). The penalty's logits come from a
*separate* forward pass on the un-augmented batch (``img_gp`` is cloned before DSA),
not from the forward that gives the loss; the penalty is *not* multiplied by the
schedule (it is added after scaling) and is active in every epoch. The gradient is
taken of the sum of all logits (``grad_outputs=ones``), and the norm runs over dim 1
(the channel axis) per pixel. We do the same. For networks that treat samples
independently (ConvNet with instance norm, MLP, or any net in eval mode) this equals
the per-image input gradient; with batch norm in train mode samples are coupled
through the batch statistics, as in AST.

Composition: ``smooth_step(inner=rule)`` hands the inner rule a loss function
``(logits, y) -> s(e) * loss_fn(logits, y) + λ * GP(model)`` that recomputes the penalty
at whatever weights the inner rule evaluates it (so SAM/GSAM perturb and differentiate
the full smooth objective, penalty included). AST itself has no SAM; the combination
is our extension and is off unless both are asked for.

Differences from the reference code, all deliberate:

- We restore w by copying the saved weights back instead of subtracting e
  (``p -= e_w``), so the restore is exact rather than off by rounding.
- Batch-norm running statistics (and ``num_batches_tracked``) are saved before the
  perturbed pass and restored after it; the references set BN momentum to 0 for that
  pass, which leaves the statistics unchanged but still counts the batch.
- The returned loss is the unscaled label loss at w; AST logs s(e)·loss + λ·GP, and
  FTD's GSAM returns the loss at w as we do.
- AST's recorder multiplies lr by 0.6 after epoch ``epochs // 2 + 1`` and recreates
  the optimizer (losing momentum); that is the training protocol's business, not a
  step rule's, and is not reproduced here.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from condense.runtime.errors import ConfigError
from condense.train import Batch, StepRule, plain_step

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

PERTURB_EPS = 1e-12
FLAT_KINDS = ("none", "sam", "gsam")
#: AST's clipping-loss schedule (epochs 0..9); 1.0 afterwards.
LOSS_DECAY_SCHEDULE = tuple((10 + e) / 20 for e in range(10))  # 0.5, 0.55, ..., 0.95
#: FTD's GSAM settings (buffer/run_buffer.sh and buffer_FTD.py's argparse defaults).
FTD_RHO, FTD_ALPHA, FTD_ADAPTIVE = 0.01, 0.4, True


def loss_decay_scale(epoch: int) -> float:
    """AST's clipping-loss factor for 0-based ``epoch``: 0.5 + 0.05·epoch for epochs 0-9, else 1.0."""
    epoch = int(epoch)
    if epoch < 0:
        raise ValueError(f"epoch must be non-negative, got {epoch}")
    return LOSS_DECAY_SCHEDULE[epoch] if epoch < len(LOSS_DECAY_SCHEDULE) else 1.0


def input_gradient_penalty(model: nn.Module, x_clean: torch.Tensor) -> torch.Tensor:
    """mean over (image, pixel) of (‖∂Σlogits/∂x‖₂ over channels − 1)², differentiable in the weights.

    x_clean: [B, C, H, W] (dim 1 is the channel axis). A separate forward pass of
    ``model`` on ``x_clean``; the input gradient is built with ``create_graph=True`` so
    the penalty can be back-propagated to the parameters (double backward). Unweighted:
    multiply by λ yourself.
    """
    with torch.enable_grad():
        x = x_clean.detach().requires_grad_(True)
        (grad_x,) = torch.autograd.grad(model(x).sum(), x, create_graph=True)
        norms = torch.linalg.vector_norm(grad_x, ord=2, dim=1)
        return ((norms - 1.0) ** 2).mean()


# ----------------------------------------------------------------------------- SAM / GSAM


def _params_with_grad(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def _global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


@contextlib.contextmanager
def _frozen_norm_stats(model: nn.Module) -> Iterator[None]:
    """Leave running statistics of norm layers (batch norm) exactly as they were after the block."""
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            saved.append((m, [(name, b.clone()) for name in ("running_mean", "running_var", "num_batches_tracked")
                              if (b := getattr(m, name, None)) is not None]))
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in saved:
                for name, value in buffers:
                    getattr(m, name).copy_(value)


def _loss_grad(model: nn.Module, batch: Batch, loss_fn: LossFn, params: list[torch.Tensor] | None,
               optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """Forward on batch.x, backward into freshly cleared ``.grad`` s; returns the loss."""
    if params is None:
        optimizer.zero_grad(set_to_none=True)
    else:
        for p in params:
            p.grad = None
    loss = loss_fn(model(batch.x), batch.y)
    loss.backward()
    return loss


def _sharpness_step(rho: float, alpha: float | None, adaptive: bool) -> StepRule:
    """SAM (alpha None) or GSAM (alpha >= 0) as one StepRule; see the module docstring."""

    def rule(model: nn.Module, batch: Batch, loss_fn: LossFn, optimizer: torch.optim.Optimizer, epoch: int) -> float:
        loss = _loss_grad(model, batch, loss_fn, None, optimizer)
        params = _params_with_grad(optimizer)
        if not params:  # nothing to perturb: an ordinary step
            optimizer.step()
            return float(loss.detach())
        grads = [p.grad for p in params]  # g = ∇L(w); these tensors are detached from p below
        with torch.no_grad():
            saved = [p.detach().clone() for p in params]
            if adaptive:
                scale = rho / (_global_norm([p.abs() * g for p, g in zip(params, grads)]) + PERTURB_EPS)
                for p, g in zip(params, grads):
                    p.add_(g * scale * p * p)
            else:
                scale = rho / (_global_norm(grads) + PERTURB_EPS)
                for p, g in zip(params, grads):
                    p.add_(g * scale)
        with _frozen_norm_stats(model):
            _loss_grad(model, batch, loss_fn, params, optimizer)  # g_p = ∇L(w + e) in p.grad
        with torch.no_grad():
            for p, w in zip(params, saved):
                p.copy_(w)
            if alpha is not None and alpha != 0.0:
                new = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
                inner = sum((g * gp).sum() for g, gp in zip(grads, new))
                new_norm, old_norm = _global_norm(new), _global_norm(grads)
                cosine = inner / (new_norm * old_norm + PERTURB_EPS)
                for p, g, gp in zip(params, grads, new):
                    orth = g - cosine * old_norm * gp / (new_norm + PERTURB_EPS)
                    p.grad = gp - alpha * orth
        optimizer.step()
        return float(loss.detach())

    return rule


def _check_rho(rho: float) -> float:
    rho = float(rho)
    if not (math.isfinite(rho) and rho > 0):
        raise ConfigError(f"SAM/GSAM rho must be a positive number, got {rho}")
    return rho


def sam_step(rho: float, *, adaptive: bool = False) -> StepRule:
    """Sharpness-aware minimisation: gradient at w + rho·g/‖g‖, applied at w (module docstring)."""
    rule = _sharpness_step(_check_rho(rho), None, bool(adaptive))
    rule.__name__ = rule.__qualname__ = f"sam_step(rho={rho}{', adaptive' if adaptive else ''})"
    return rule


def gsam_step(rho: float, alpha: float, *, adaptive: bool = False) -> StepRule:
    """GSAM: the SAM gradient minus ``alpha`` times the part of ∇L(w) orthogonal to it (module docstring)."""
    alpha = float(alpha)
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ConfigError(f"GSAM alpha must be a non-negative number, got {alpha}")
    rule = _sharpness_step(_check_rho(rho), alpha, bool(adaptive))
    rule.__name__ = rule.__qualname__ = f"gsam_step(rho={rho}, alpha={alpha}{', adaptive' if adaptive else ''})"
    return rule


# ----------------------------------------------------------------------------- smooth experts


def smooth_step(loss_decay: bool = True, gp_weight: float = 2.0, inner: StepRule | None = None) -> StepRule:
    """AST's smooth-expert objective s(epoch)·loss + gp_weight·GP(x_clean), stepped by ``inner``.

    ``loss_decay``: multiply the label loss by :func:`loss_decay_scale` (epochs 0-9).
    ``gp_weight``: λ of :func:`input_gradient_penalty` on ``batch.x_clean`` (0 = off).
    ``inner``: the rule that takes the step on this objective (default plain SGD;
    :func:`sam_step` / :func:`gsam_step` compose, the penalty being recomputed at the
    perturbed weights). Returns the unscaled label loss at the starting weights.
    """
    gp_weight = float(gp_weight)
    if not (math.isfinite(gp_weight) and gp_weight >= 0):
        raise ConfigError(f"gradient-penalty weight must be a non-negative number, got {gp_weight}")
    inner = plain_step if inner is None else inner

    def rule(model: nn.Module, batch: Batch, loss_fn: LossFn, optimizer: torch.optim.Optimizer, epoch: int) -> float:
        scale = loss_decay_scale(epoch) if loss_decay else 1.0
        first: list[float] = []

        def objective(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            label = loss_fn(logits, y)
            if not first:
                first.append(float(label.detach()))
            total = label * scale if scale != 1.0 else label
            if gp_weight > 0:
                total = total + gp_weight * input_gradient_penalty(model, batch.x_clean)
            return total

        reported = inner(model, batch, objective, optimizer, epoch)
        return first[0] if first else float(reported)

    rule.__name__ = rule.__qualname__ = (
        f"smooth_step(loss_decay={bool(loss_decay)}, gp_weight={gp_weight}, "
        f"inner={getattr(inner, '__name__', repr(inner))})")
    return rule


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ExpertRegularizer:
    """How experts are regularised: flat (SAM/GSAM), smooth (AST), both, or neither.

    flat: "none" | "sam" | "gsam". sam_rho: the perturbation radius of SAM and GSAM;
    default 0.05, SAM's published default for CIFAR (Foret et al.); FTD's GSAM preset
    uses 0.01. gsam_alpha: 0.4, FTD's value (GSAM paper's range is [0, 1]).
    adaptive: the ASAM-style perturbation FTD's code always uses (see module docstring;
    default off = the papers' SAM/GSAM). smooth: turn on AST's smooth-expert objective
    with ``loss_decay`` (the 0.5→0.95 schedule over epochs 0-9) and ``gp_weight``
    (λ of the input-gradient penalty; AST uses 2; 0 = off).
    """

    flat: str = "none"
    sam_rho: float = 0.05
    gsam_alpha: float = FTD_ALPHA
    adaptive: bool = False
    smooth: bool = False
    gp_weight: float = 2.0
    loss_decay: bool = True

    def validate(self) -> None:
        if self.flat not in FLAT_KINDS:
            raise ConfigError(f"unknown flat-expert kind {self.flat!r}; choose one of {', '.join(FLAT_KINDS)}")
        if not (isinstance(self.sam_rho, (int, float)) and math.isfinite(self.sam_rho) and self.sam_rho > 0):
            raise ConfigError(f"sam_rho must be a positive number, got {self.sam_rho}")
        if not (isinstance(self.gsam_alpha, (int, float)) and math.isfinite(self.gsam_alpha) and self.gsam_alpha >= 0):
            raise ConfigError(f"gsam_alpha must be a non-negative number, got {self.gsam_alpha}")
        if not (isinstance(self.gp_weight, (int, float)) and math.isfinite(self.gp_weight) and self.gp_weight >= 0):
            raise ConfigError(f"gp_weight must be a non-negative number, got {self.gp_weight}")

    def step_rule(self) -> StepRule:
        """The StepRule these settings mean; ``condense.train.plain_step`` itself when nothing is on."""
        self.validate()
        if self.flat == "sam":
            base = sam_step(self.sam_rho, adaptive=self.adaptive)
        elif self.flat == "gsam":
            base = gsam_step(self.sam_rho, self.gsam_alpha, adaptive=self.adaptive)
        else:
            base = plain_step
        if self.smooth and (self.loss_decay or self.gp_weight > 0):
            return smooth_step(self.loss_decay, self.gp_weight, inner=base)
        return base

    def describe(self) -> dict:
        """JSON-able settings (all fields) plus the rule's name, for a trajectory store's metadata."""
        self.validate()
        d = asdict(self)
        d["rule"] = getattr(self.step_rule(), "__name__", "custom")
        return d

"""Trajectory matching's core computation, as pure functions over flat parameters.

A student starts at an expert's parameters θ_s (epoch s) and takes N SGD steps on
synthetic mini-batches with a learnable step size α, with heavy-ball momentum μ
(0 in MTT; 0.9 in AST's student, as ``torch.optim.SGD`` does it: m_0 = 0):

    g_t = ∇_θ L(f(θ_t, A_t(X[B_t])), Y[B_t])
    m_{t+1} = μ m_t + g_t,   θ_{t+1} = θ_t − α m_{t+1}          t = 0 .. N−1

(B_t the step's batch, A_t its DSA draw). The matching loss (MTT, Cazenavette et al. 2022) is

    ℓ = ‖θ_N − θ*‖² / ‖θ_s − θ*‖²           θ* = the expert's parameters at epoch s + M

and its gradients flow to the images X, to α (and so to its parameter: MTT's α
itself or condense's ρ with α = exp(ρ)) and, when learned, to the labels Y. AST's
intermediate matching adds terms w_k ‖θ_{m_k} − θ*_{s+k}‖² / ‖θ_s − θ*_{s+k}‖² for
intermediate student steps m_k: every function here takes a list of such targets.

Two ways to get them, equal up to float rounding (tests check it):

- :func:`match_exact` builds the whole unrolled graph and lets autograd differentiate
  it (what MTT does). Memory grows with N: every step's activations are kept.
- :func:`match_constant_memory` runs the N steps without a graph, keeping only the
  vectors θ_0..θ_N (and m_1..m_N), then walks back with the adjoints u_t = ∂ℓ/∂θ_t and
  w_t = ∂ℓ/∂m_t (w_N = 0):

      u_N  = 2 (θ_N − θ*) / ‖θ_s − θ*‖²           (+ the same term at every intermediate target)
      W    = w_{t+1} − α u_{t+1}                  the total adjoint of m_{t+1}
      ∂ℓ/∂X += (∂g_t/∂X)ᵀ W                       (same for Y)
      ∂ℓ/∂α += −⟨u_{t+1}, m_{t+1}⟩
      u_t   = u_{t+1} + H_t W,   w_t = μ W        H_t = ∇²_θ L_t(θ_t)

  (with μ = 0: W = −α u, the plain-SGD adjoint), recomputing step t's forward pass and
  taking one double-backward per step, so at most one step's graph is alive: memory
  independent of N apart from the stored vectors (N × 4 bytes × n_params each; 2 MB for
  20 steps of ConvNet W32). Unlike TESLA's (Cui et al. 2023) batched gradient, which
  drops the Hessian terms H_t (the cross-step interactions) and is therefore an
  approximation, this keeps every term: it is the exact gradient, at the cost of one
  extra forward+backward per step.

A step "plan" fixes each step's batch indices and DSA draw, so both functions (and
any backend) see exactly the same inputs. The variants' own formulas are here too: AST's
weight perturbation of the start (:func:`perturb_conv_weights`) and balanced inner loss
(:func:`balance_scale`). :meth:`condense.methods.tm.TrajectoryMatching.compute_grads`
composes them into one iteration.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..augment import DSADraw, apply_dsa
from ..nets import functional_call
from ..texture import toroidal_crops

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Step:
    """One inner step: which synthetic images (indices into X), which DSA draw (or None), and for
    textures the offsets [S · n, 2] of S toroidal crops of size ``crop`` of each of the n canvases."""

    indices: torch.Tensor
    draw: DSADraw | None = None
    crops: torch.Tensor | None = None
    crop: tuple[int, int] | None = None


def student_loss(net: nn.Module, theta: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, step: Step,
                 loss_fn: LossFn) -> torch.Tensor:
    """L_t(θ): the student's loss with flat parameters θ [P] on step ``step``'s batch of images
    [N, C, H, W] (textures: their crops; augmented by its draw) against its labels ([N] or [N, K]): a scalar."""
    x, y = images[step.indices], labels[step.indices]
    if step.crops is not None:
        samples = step.crops.shape[0] // x.shape[0]
        x = toroidal_crops(x.repeat(samples, 1, 1, 1), step.crops, step.crop)
        y = y.repeat(samples, *([1] * (y.ndim - 1)))
    if step.draw is not None:
        x = apply_dsa(x, step.draw)
    return loss_fn(functional_call(net, theta, x), y)


def sgd_step(theta: torch.Tensor, buf: torch.Tensor, g: torch.Tensor, lr: float | torch.Tensor,
             momentum: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(θ_{t+1}, m_{t+1}) = (θ_t − α m_{t+1}, μ m_t + g_t): ``torch.optim.SGD``'s heavy ball (m_0 = 0)."""
    buf = momentum * buf + g if momentum else g
    return theta - lr * buf, buf


@dataclass(frozen=True)
class Target:
    """Match the student after ``step`` inner steps to ``params`` (an expert epoch), weight ``weight``."""

    step: int
    params: torch.Tensor
    weight: float = 1.0


def match_loss(theta: torch.Tensor, start: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """‖θ − θ*‖² / ‖θ_s − θ*‖² (MTT's normalised parameter distance)."""
    return (theta - target).pow(2).sum() / (start - target).pow(2).sum()


def match_exact(net: nn.Module, start: torch.Tensor, targets: list[Target], images: torch.Tensor,
                labels: torch.Tensor, lr: torch.Tensor, plan: list[Step], loss_fn: LossFn,
                momentum: float = 0.0) -> torch.Tensor:
    """Σ_k w_k ‖θ_{m_k} − T_k‖² / ‖θ_0 − T_k‖² with the whole unrolled graph attached
    (call ``.backward()`` on it).

    start: [P] flat parameters θ_0; targets: MTT's single (len(plan), θ*_{s+M}), plus
    intermediate ones for AST's intermediate matching; images [N, C, H, W]; labels [N]
    or [N, K]; lr: scalar α (a function of whatever parametrises it: exp(ρ) or α itself);
    momentum: the student's μ. Gradients reach whichever of images, labels and lr's
    parameter require them.
    """
    theta = start.detach().requires_grad_(True)
    buf = torch.zeros_like(theta)
    loss = _loss_at(0, theta, start, targets)
    for t, step in enumerate(plan, start=1):
        g = torch.autograd.grad(student_loss(net, theta, images, labels, step, loss_fn), theta, create_graph=True)[0]
        theta, buf = sgd_step(theta, buf, g, lr, momentum)
        loss = loss + _loss_at(t, theta, start, targets)
    return loss


def _loss_at(t: int, theta: torch.Tensor, start: torch.Tensor, targets: list[Target]) -> torch.Tensor:
    terms = [k.weight * match_loss(theta, start, k.params) for k in targets if k.step == t]
    return sum(terms, torch.zeros((), dtype=start.dtype, device=start.device))


def unroll(net: nn.Module, start: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, lr: float,
           plan: list[Step], loss_fn: LossFn, momentum: float = 0.0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(θ_0..θ_N, m_1..m_N) of the student, no graph kept: N + 1 and N [P] tensors."""
    thetas, bufs = [start.detach()], []
    images, labels = images.detach(), labels.detach()
    buf = torch.zeros_like(thetas[0])
    for step in plan:
        theta = thetas[-1].requires_grad_(True)
        g = torch.autograd.grad(student_loss(net, theta, images, labels, step, loss_fn), theta)[0]
        thetas[-1] = theta.detach()
        theta, buf = sgd_step(theta, buf, g, lr, momentum)
        bufs.append(buf)
        thetas.append(theta.detach())
    return thetas, bufs


def match_constant_memory(net: nn.Module, start: torch.Tensor, targets: list[Target], images: torch.Tensor,
                          labels: torch.Tensor, lr: float | torch.Tensor, plan: list[Step], loss_fn: LossFn,
                          momentum: float = 0.0) -> tuple[float, dict[str, torch.Tensor]]:
    """The same loss as :func:`match_exact` and its exact gradients, one step's graph alive at a time.

    Returns (loss, grads) with grads["images"] like images, grads["lr"] = ∂ℓ/∂α (a scalar;
    the caller applies the chain rule of its parametrisation) and grads["labels"] like
    labels when labels require grad.
    """
    lr = float(lr.detach()) if isinstance(lr, torch.Tensor) else float(lr)
    thetas, bufs = unroll(net, start, images, labels, lr, plan, loss_fn, momentum)
    start = start.detach()
    loss = sum(float(k.weight * match_loss(thetas[k.step], start, k.params)) for k in targets)
    u, w = torch.zeros_like(start), torch.zeros_like(start)
    want_labels = labels.requires_grad
    g_images = torch.zeros_like(images)
    g_labels = torch.zeros_like(labels) if want_labels else None
    g_lr = torch.zeros((), dtype=start.dtype, device=start.device)
    for t in reversed(range(len(plan))):
        for k in targets:  # ∂ℓ/∂θ_{t+1} gains the direct term of every target matched there
            if k.step == t + 1:
                u = u + k.weight * 2.0 * (thetas[t + 1] - k.params) / (start - k.params).pow(2).sum()
        big_w = w - lr * u
        g_lr -= (u * bufs[t]).sum()
        theta = thetas[t].detach().requires_grad_(True)
        g = torch.autograd.grad(student_loss(net, theta, images, labels, plan[t], loss_fn), theta, create_graph=True)[0]
        inputs = [theta, images] + ([labels] if want_labels else [])
        vjps = torch.autograd.grad(g, inputs, grad_outputs=big_w, allow_unused=True)
        if vjps[1] is not None:
            g_images += vjps[1]
        if want_labels and vjps[2] is not None:
            g_labels += vjps[2]
        u = u + vjps[0]
        w = momentum * big_w
    grads = {"images": g_images, "lr": g_lr}
    if want_labels:
        grads["labels"] = g_labels
    return loss, grads


def perturb_conv_weights(theta: torch.Tensor, conv_slices: list[tuple[int, int]], g: torch.Generator) -> torch.Tensor:
    """AST's weight perturbation of a start θ [P]: every conv weight W (the flat ``conv_slices`` of θ)
    becomes W + (d / ‖d‖_F) ⊙ W with d ~ N(0, 1) drawn from ``g`` (on the CPU, slice by slice); a new [P]."""
    theta = theta.clone()
    for a, b in conv_slices:
        d = torch.randn(b - a, generator=g).to(theta.device)
        theta[a:b] += d / d.norm() * theta[a:b]
    return theta


def balance_scale(s: int, max_start_epoch: int) -> float:
    """AST's balanced inner loss: its factor for start epoch ``s``, log₅(s − h + 8) from h =
    ``max_start_epoch`` // 2 on (late starts weigh more) and 1 / log₅(h − s + 8) before."""
    h = max_start_epoch // 2
    return math.log(s - h + 8, 5) if s >= h else 1.0 / math.log(h - s + 8, 5)

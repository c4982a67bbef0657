"""Trajectory matching's core computation, as pure functions over flat parameters.

A student starts at an expert's parameters θ_s (epoch s) and takes N SGD steps on
synthetic mini-batches with a learnable step size α = exp(ρ):

    θ_{t+1} = θ_t − α ∇_θ L(f(θ_t, A_t(X[B_t])), Y[B_t])        t = 0 .. N−1

(B_t the step's batch, A_t its DSA draw). The matching loss (MTT, Cazenavette et al. 2022) is

    ℓ = ‖θ_N − θ*‖² / ‖θ_s − θ*‖²           θ* = the expert's parameters at epoch s + M

and its gradients flow to the images X, to ρ and, when learned, to the labels Y. AST's
intermediate matching adds terms w_k ‖θ_{m_k} − θ*_{s+k}‖² / ‖θ_s − θ*_{s+k}‖² for
intermediate student steps m_k: every function here takes a list of such targets.

Two ways to get them, equal up to float rounding (tests check it):

- :func:`match_exact` builds the whole unrolled graph and lets autograd differentiate
  it (what MTT does). Memory grows with N: every step's activations are kept.
- :func:`match_constant_memory` runs the N steps without a graph, keeping only the
  parameter vectors θ_0..θ_N, then walks back with the adjoint v_t = ∂ℓ/∂θ_t:

      v_N  = 2 (θ_N − θ*) / ‖θ_s − θ*‖²           (+ the same term at every intermediate target)
      ∂ℓ/∂X += −α · (∂g_t/∂X)ᵀ v_{t+1}          g_t = ∇_θ L_t(θ_t)  (same for Y)
      ∂ℓ/∂α += −⟨v_{t+1}, g_t⟩
      v_t   = v_{t+1} − α · H_t v_{t+1}         H_t = ∇²_θ L_t(θ_t)

  recomputing step t's forward pass and taking one double-backward per step, so at
  most one step's graph is alive: memory independent of N apart from the N+1
  parameter vectors (N × 4 bytes × n_params; 2 MB for 20 steps of ConvNet W32). Unlike
  TESLA's (Cui et al. 2023) batched gradient, which drops the Hessian terms H_t (the
  cross-step interactions) and is therefore an approximation, this keeps every term:
  it is the exact gradient, at the cost of one extra forward+backward per step.

A step "plan" fixes each step's batch indices and DSA draw, so both functions (and
any backend) see exactly the same inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..augment import DSADraw, apply_dsa
from ..nets import functional_call

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Step:
    """One inner step: which synthetic images (indices into X) and which DSA draw (or None)."""

    indices: torch.Tensor
    draw: DSADraw | None = None


def _inner_loss(net: nn.Module, theta: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, step: Step,
                loss_fn: LossFn) -> torch.Tensor:
    x = images[step.indices]
    if step.draw is not None:
        x = apply_dsa(x, step.draw)
    return loss_fn(functional_call(net, theta, x), labels[step.indices])


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
                labels: torch.Tensor, log_lr: torch.Tensor, plan: list[Step], loss_fn: LossFn) -> torch.Tensor:
    """Σ_k w_k ‖θ_{m_k} − T_k‖² / ‖θ_0 − T_k‖² with the whole unrolled graph attached
    (call ``.backward()`` on it).

    start: [P] flat parameters θ_0; targets: MTT's single (len(plan), θ*_{s+M}), plus
    intermediate ones for AST's intermediate matching; images [N, C, H, W]; labels [N]
    or [N, K]; log_lr: scalar ρ with α = exp(ρ). Gradients reach whichever of images,
    labels and log_lr require them.
    """
    lr = log_lr.exp()
    theta = start.detach().requires_grad_(True)
    loss = _loss_at(0, theta, start, targets)
    for t, step in enumerate(plan, start=1):
        g = torch.autograd.grad(_inner_loss(net, theta, images, labels, step, loss_fn), theta, create_graph=True)[0]
        theta = theta - lr * g
        loss = loss + _loss_at(t, theta, start, targets)
    return loss


def _loss_at(t: int, theta: torch.Tensor, start: torch.Tensor, targets: list[Target]) -> torch.Tensor:
    terms = [k.weight * match_loss(theta, start, k.params) for k in targets if k.step == t]
    return sum(terms, torch.zeros((), dtype=start.dtype, device=start.device))


def unroll(net: nn.Module, start: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, lr: float,
           plan: list[Step], loss_fn: LossFn) -> list[torch.Tensor]:
    """θ_0..θ_N of the student (no graph kept): a list of N + 1 [P] tensors."""
    thetas = [start.detach()]
    images, labels = images.detach(), labels.detach()
    for step in plan:
        theta = thetas[-1].requires_grad_(True)
        g = torch.autograd.grad(_inner_loss(net, theta, images, labels, step, loss_fn), theta)[0]
        thetas[-1] = theta.detach()
        thetas.append((theta - lr * g).detach())
    return thetas


def match_constant_memory(net: nn.Module, start: torch.Tensor, targets: list[Target], images: torch.Tensor,
                          labels: torch.Tensor, log_lr: torch.Tensor, plan: list[Step], loss_fn: LossFn,
                          ) -> tuple[float, dict[str, torch.Tensor]]:
    """The same loss as :func:`match_exact` and its exact gradients, one step's graph alive at a time.

    Returns (loss, grads) with grads["images"] like images, grads["log_lr"] a scalar and
    grads["labels"] like labels when labels require grad.
    """
    lr = float(log_lr.detach().exp())
    thetas = unroll(net, start, images, labels, lr, plan, loss_fn)
    start = start.detach()
    loss = sum(float(k.weight * match_loss(thetas[k.step], start, k.params)) for k in targets)
    v = torch.zeros_like(start)
    want_labels = labels.requires_grad
    g_images = torch.zeros_like(images)
    g_labels = torch.zeros_like(labels) if want_labels else None
    g_lr = torch.zeros((), dtype=start.dtype, device=start.device)
    for t in reversed(range(len(plan))):
        for k in targets:  # ∂ℓ/∂θ_{t+1} gains the direct term of every target matched there
            if k.step == t + 1:
                v = v + k.weight * 2.0 * (thetas[t + 1] - k.params) / (start - k.params).pow(2).sum()
        theta = thetas[t].detach().requires_grad_(True)
        g = torch.autograd.grad(_inner_loss(net, theta, images, labels, plan[t], loss_fn), theta, create_graph=True)[0]
        inputs = [theta, images] + ([labels] if want_labels else [])
        vjps = torch.autograd.grad(g, inputs, grad_outputs=v, allow_unused=True)
        g_lr -= (v * g.detach()).sum()
        if vjps[1] is not None:
            g_images -= lr * vjps[1]
        if want_labels and vjps[2] is not None:
            g_labels -= lr * vjps[2]
        v = v - lr * vjps[0]
    grads = {"images": g_images, "log_lr": g_lr * lr}  # dℓ/dρ = dℓ/dα · α
    if want_labels:
        grads["labels"] = g_labels
    return loss, grads

"""`frepo`: dataset distillation with neural feature regression and a model pool (FRePo; Zhou,
Nezhadarya & Ba, NeurIPS 2022; reference: yongchaoz/FRePo, ``lib/datadistillation/frepo.py``).
JAX only.

The math (pure functions, first screen of this module). With the feature extractor f of a
network (its penultimate layer, parameters held fixed: ``stop_gradient``), synthetic images
X_s [n] with learned labels Y_s [n, K] and a real batch X_t [m] with centred one-hot labels
Y_t [m, K] (1 − 1/K on the class, −1/K elsewhere):

    F_s = f(X_s) [n, d],  F_t = f(X_t) [m, d],  K_ss = F_s F_sᵀ,  K_ts = F_t F_sᵀ
    Ŷ_t = K_ts (K_ss + λ I)⁻¹ Y_s,      λ = reg · tr(K_ss) / n   (reg = 1e-6)
    loss = mean_i ½ ‖Ŷ_t,i − Y_t,i‖²  +  mean_j −min(top1(Y_s,j) − top2(Y_s,j), 1/K)

(:func:`krr_loss`, :func:`margin_loss`): the last layer of the network trained to convergence
on the synthetic set is kernel ridge regression on its features, so the meta-gradient is the
gradient through the kernel and the fixed feature extractor, no unrolled inner loop. The
second term (the reference's label loss) keeps each learned label's margin from shrinking
below 1/K. The real features carry no gradient; gradients reach X_s and Y_s only. With
``flip`` (the reference's choice for colour datasets) X_s enters the kernel together with
its horizontal mirror images, sharing Y_s.

The model pool. ``pool_size`` networks are kept, the i-th starting at online step
``(max_online_steps // pool_size) · i`` so their ages are spread. Iteration ``it`` picks one
network at random, takes one step of the images and labels on its loss, then trains that
network one Adam step (lr ``lr_online``) on the synthetic set and the current learned labels
with the reference's ½‖·‖² regression loss (:func:`pool_loss`), or, once it has taken more than
``max_online_steps`` steps, re-initialises it (the pool is :class:`~condense.jax.pool.ModelPool`,
shared with KRR-ST). Images and labels move
together by LAMB (``--optimizer lamb``, the reference's; ``adam`` offered) with a cosine decay
of ``lr_img`` to 0.1× over ``iters``, without weight decay (optax's default, as the reference).
(The horizon is ``--iters``: continuing a finished run with a larger ``--iters`` resumes on the
longer schedule from the step reached.)

In condense. All randomness comes from (seed, it, stream): the pool member picked, the real
batch (``batch_real`` images drawn without replacement from the training split, not class
balanced, as the reference's shuffled loader), the online batch when the set is larger than
``online_batch``, and the (re-)initialisation of pool networks, drawn by torch's initialiser
(the evaluation networks' init) and converted to the flax twin. The pool (flat parameter
vectors [P, D] in the canonical torch layout, Adam states, online step counts) is extra state
of the shared loop (:mod:`condense.methods.loop`), so kill-and-resume gives the same set as an
uninterrupted run; the pool advances only after a successful step (a skipped or rolled-back
step leaves it as it was), and a pool network whose online step leaves it non-finite is
re-initialised.

The labels' meaning. FRePo's labels are regression targets: the reference trains its
evaluation networks on them with the same ½‖·‖² loss (``proto_evaluate(loss='mse')``), so the
set stores them as ``LabelSpec(kind="regression", loss="mse")``; condense's evaluation uses
torch's ``mse_loss`` (a mean over classes instead of ½ Σ: the same minimiser, gradients
scaled by 2/K).

Deviations from the reference, and why: the reference's ``conv`` doubles the width at each
block and normalises before the convolution (with batch norm in its README's command);
condense uses its own ConvNet (norm ``instance`` or ``none``: batch norm has no JAX twin) so
that the features distilled for are those of the evaluation network. The reference picks
pool members with the unseeded global numpy RNG; ours are keyed draws. Devices: one (JAX's
default) unless there are several local ones, then only the real batch is split across them
(:func:`data_parallel`; the reference pmaps whole replicas with a pool per device instead).
"""
from __future__ import annotations

from dataclasses import asdict
from functools import lru_cache, partial
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..data import load_dataset
from ..runtime.errors import ConfigError
from ..methods.frepo import FRePoConfig
from ..nets import parse_arch
from ..runtime.rng import generator
from ..synset import LabelSpec, SynSet
from .bridge import image_shape, mark_jax, to_jax, to_torch
from .krr import krr_solve
from .nets import JaxNet, build_jax_net
from .optim import OptaxOptimizer
from .pool import ModelPool, PooledSynthesizer, compiled_step

STREAM_REAL = 32

Tree = Any


# --- the math, as pure functions ------------------------------------------------------------------

def centred_one_hot(y: jax.Array, k: int) -> jax.Array:
    """Class indices [m] -> regression targets [m, K]: 1 − 1/K on the class, −1/K elsewhere."""
    return jax.nn.one_hot(y, k) - 1.0 / k


def krr_predict(f_s: jax.Array, f_t: jax.Array, y_s: jax.Array, reg: float) -> jax.Array:
    """Kernel ridge regression with the linear kernel on features: f_s [n, d], f_t [m, d],
    y_s [n, K] -> predictions [m, K] = K_ts (K_ss + reg·tr(K_ss)/n · I)⁻¹ y_s. The ridge scales
    with the kernel's mean diagonal, so ``reg`` means the same for any feature magnitude."""
    k_ss = f_s @ f_s.T
    return krr_solve(k_ss, f_t @ f_s.T, y_s, abs(reg) * jnp.trace(k_ss) / k_ss.shape[0])


def krr_loss(f_s: jax.Array, f_t: jax.Array, y_s: jax.Array, y_t: jax.Array, reg: float) -> jax.Array:
    """mean_i ½ ‖ŷ_i − y_t,i‖² of :func:`krr_predict` against the real targets y_t [m, K]."""
    return 0.5 * ((krr_predict(f_s, f_t, y_s, reg) - y_t) ** 2).sum(-1).mean()


def margin_loss(y_s: jax.Array) -> jax.Array:
    """The reference's label term: mean_j −min(top1 − top2 of y_s[j], 1/K), y_s [n, K]."""
    top2 = jax.lax.top_k(y_s, 2)[0]
    return -jnp.minimum(top2[:, 0] - top2[:, 1], 1.0 / y_s.shape[-1]).mean()


def frepo_loss(net: JaxNet, flip: bool, reg: float, images: jax.Array, labels: jax.Array, flat: jax.Array,
               x_real: jax.Array, y_real: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(total loss, kernel-regression part) of one iteration: images [n, C, H, W] with labels
    [n, K], pool network ``flat`` [D] (torch layout; no gradient), real batch x_real [m, C, H, W]
    with targets y_real [m, K]."""
    params = jax.lax.stop_gradient(net.params(flat))
    if flip:  # mirror images share their originals' labels
        images = jnp.concatenate([images, jnp.flip(images, axis=-1)])
        labels = jnp.concatenate([labels, labels])
    f_t = jax.lax.stop_gradient(net.embed(params, x_real))
    kernel = krr_loss(net.embed(params, images), f_t, labels, y_real, reg)
    return kernel + margin_loss(labels), kernel


def pool_loss(net: JaxNet, flat: jax.Array, images: jax.Array, labels: jax.Array) -> jax.Array:
    """A pool network's online loss on the synthetic set: mean_j ½ ‖logits_j − labels_j‖²."""
    return 0.5 * ((net.apply(net.params(flat), images) - labels) ** 2).sum(-1).mean()


@lru_cache(maxsize=None)
def compiled(net: JaxNet, flip: bool, reg: float, lr_online: float):
    """(jit(value_and_grad(frepo_loss)) w.r.t. images and labels, the pool's jitted online step
    (:func:`~condense.jax.pool.pool_step` of :func:`pool_loss`), its optax transformation); cached,
    so method instances of one setting share their compilations."""
    tx = optax.adam(lr_online)
    loss = jax.jit(jax.value_and_grad(partial(frepo_loss, net, flip, reg), argnums=(0, 1), has_aux=True))
    return loss, compiled_step(pool_loss, net, tx), tx


def data_parallel(batch: int) -> tuple[NamedSharding, NamedSharding] | None:
    """(replicated, split along the batch) shardings over the local devices when there are several
    and they divide ``batch``, else None. With them XLA partitions the real batch's forward pass,
    the bulk of an iteration, across the devices and all-reduces the loss; the results equal one
    device's up to the order of float sums."""
    devices = jax.local_devices()
    if len(devices) < 2 or batch % len(devices):
        return None
    mesh = Mesh(np.array(devices), ("batch",))
    return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("batch"))


def synthesis_optimizer(params: Sequence[torch.Tensor], cfg: FRePoConfig) -> OptaxOptimizer:
    """LAMB (or Adam) with lr_img decayed by a cosine to 0.1x over the run, as the reference."""
    schedule = optax.cosine_decay_schedule(cfg.lr_img, decay_steps=cfg.iters, alpha=0.1)
    tx = optax.lamb(schedule) if cfg.optimizer == "lamb" else optax.adam(schedule)
    return OptaxOptimizer(params, tx)


# --- the method -----------------------------------------------------------------------------------

class FRePo(PooledSynthesizer):
    """FRePo as a :class:`~condense.methods.loop.Synthesizer` (see the module docstring)."""

    method_name = "frepo"

    def __init__(self, cfg: FRePoConfig, ds):
        cfg.validate()
        self.cfg, self.ds = cfg, ds
        self.arch = str(parse_arch(cfg.arch))
        k, (c, h, w) = ds.info.num_classes, image_shape(ds)
        sizes = [int((ds.y_train == i).sum()) for i in range(k)]
        if cfg.ipc > min(sizes):
            raise ConfigError(f"--ipc {cfg.ipc} exceeds the smallest class of {cfg.dataset} ({min(sizes)} images)")
        self.outputs = k
        self.twin = build_jax_net(self.arch, c, k, (h, w))
        from ..methods.init import initial_images

        images, self.classes, self.indices = initial_images(ds.x_train, ds.y_train, k, cfg.ipc, cfg.init, cfg.seed)
        self.images = images.float().requires_grad_(True)
        # The reference's initial labels: centred one-hot, divided by sqrt(K / 10).
        labels = torch.nn.functional.one_hot(self.classes, k).float() - 1.0 / k
        self.labels = (labels / (k / 10) ** 0.5).requires_grad_(cfg.learn_labels)
        self.opts = {"synset": synthesis_optimizer(list(self.learnables().values()), cfg)}
        self.x_train, self.y_train = to_jax(ds.x_train), to_jax(ds.y_train, jnp.int32)
        self._loss, step, tx = compiled(self.twin, cfg.flip, cfg.reg, cfg.lr_online)
        self.shardings = data_parallel(min(cfg.batch_real, ds.x_train.shape[0]))
        self.pool = ModelPool(cfg.pool_size, cfg.max_online_steps, cfg.online_batch, cfg.seed, tx, step,
                              self.fresh_network)

    # -- the loop's interface --

    def learnables(self) -> dict[str, torch.Tensor]:
        return {"images": self.images, **({"labels": self.labels} if self.cfg.learn_labels else {})}

    def real_batch(self, it: int) -> tuple[jax.Array, jax.Array]:
        """Iteration ``it``'s real images [m, C, H, W] and centred one-hot targets [m, K]."""
        n = self.ds.x_train.shape[0]
        idx = torch.randperm(n, generator=generator(self.cfg.seed, it, STREAM_REAL))[:self.cfg.batch_real]
        idx = to_jax(idx, jnp.int32)
        return self.x_train[idx], centred_one_hot(self.y_train[idx], self.ds.info.num_classes)

    def compute_grads(self, it: int) -> dict[str, float]:
        i = self.pool.pick(it)
        x_real, y_real = self.real_batch(it)
        args = (to_jax(self.images), to_jax(self.labels), self.pool.params[i], x_real, y_real)
        if self.shardings is not None:  # the real batch split over the local devices, the rest replicated
            rep, split = self.shardings
            args = tuple(jax.device_put(a, s) for a, s in zip(args, (rep, rep, rep, split, split)))
        (loss, kernel), grads = self._loss(*args)
        self.images.grad = to_torch(grads[0], like=self.images)
        if self.cfg.learn_labels:
            self.labels.grad = to_torch(grads[1], like=self.labels)
        return {"loss": float(loss), "kernel_loss": float(kernel), "pool_member": i,
                "member_step": int(self.pool.steps[i])}

    def after_step(self, it: int) -> None:
        """Advance the pool member of iteration ``it`` on the updated set (the reference's order)."""
        self.pool.advance(it, to_jax(self.images), to_jax(self.labels))

    def synset(self, it: int) -> SynSet:
        return mark_jax(super().synset(it)).with_labels(self.labels.detach().cpu().clone(),
                                                        LabelSpec(kind="regression", loss="mse"))


def load_for(cfg: FRePoConfig):
    """The dataset of ``cfg`` (training split as the method sees it)."""
    return load_dataset(cfg.dataset, cfg.data_root, zca=cfg.zca, limit_train=cfg.limit_train)


def run_frepo(cfg: FRePoConfig, device=None, *, progress=print, bars: bool = True, evaluate=None) -> SynSet:
    """Synthesize (or resume) ``cfg.out`` with FRePo in JAX (JAX's default device)."""
    from ..methods.loop import synthesize

    cfg.validate()
    method = FRePo(cfg, load_for(cfg))
    return synthesize(method, cfg, cfg.out, {"method": "frepo", "backend": "jax", **asdict(cfg),
                                                     "arch": method.arch},
                      progress=progress, bars=bars, evaluate=evaluate)

"""`krr-st`: self-supervised dataset distillation by kernel ridge regression on a model pool's
features (KRR-ST; Lee, Lee & Hwang, "Self-Supervised Dataset Distillation for Transfer Learning",
ICLR 2024; reference: db-Lee/selfsup_dd, ``algorithms/distill.py`` and ``model_pool.py``). JAX only.

The math (pure functions, first screen of this module). An unlabelled dataset is distilled into
images X_s [n, C, H, W] with target representations Y_s [n, D]. A self-supervised teacher g
(``condense teacher --ssl``) gives the targets of a real batch X_t [m] (random crop + flip first):
Y_t = g(X_t) [m, D]. With the feature extractor f of a pool network (its penultimate layer, held
fixed), each feature row extended by a constant 1 (a bias column):

    F_s = [f(X_s), 1] [n, d+1],  F_t = [f(X_t), 1] [m, d+1],  K_ss = F_s F_sᵀ,  K_ts = F_t F_sᵀ
    Ŷ_t = K_ts (K_ss + λ I)⁻¹ Y_s,      λ = ridge · tr(K_ss), held fixed in the gradient (ridge = 1e-6)
    loss = mean over [m, D] of (Ŷ_t − Y_t)²

(:func:`krr_st_predict`, :func:`krr_st_loss`). Ŷ_t is what a linear head fitted in closed form on
the synthetic set predicts for the real images, so no inner loop is unrolled and no
augmentation-dependent inner gradient biases the outer one. Gradients reach X_s and Y_s. The
labels of the dataset are never read.

The model pool (:class:`~condense.jax.pool.ModelPool`, FRePo's): ``pool_size`` networks whose heads
regress the targets (D outputs); after each step of the set, the network used takes one SGD step
(lr 0.1, momentum 0.9, weight decay 1e-3: the reference's) on mean (net(X_s) − Y_s)² over the whole
set (:func:`pool_loss`), or is re-initialised after ``max_online_steps`` steps. Images and targets
move by one Adam with lr decayed linearly to a thousandth over ``iters`` (the reference's AdamW
without weight decay and its LinearLR). Initial images are random training images (seeded, not class-balanced: no labels are
read) and their initial targets the teacher's representations of them.

Deviations from the reference, and why. The reference's step counter of a pool network is never
cleared when the network is re-initialised, so after ``max_online_steps`` selections a network is
re-initialised at every later selection and the pool stays at random init; here a fresh network
starts at step 0 (FRePo's pool). Its pool networks are BatchNorm ConvNets in eval mode; condense's
are its own networks with instance norm (as FRePo here: batch norm has no JAX twin). Its synthetic
images are stored un-normalised while the real batch is normalised; here both live in the
dataset's normalised space, as every other set. Pool members are keyed draws, not numpy's global RNG.
"""
from __future__ import annotations

from dataclasses import asdict
from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import optax
import torch

from ..augment import DSAConfig, apply_dsa, sample_dsa
from ..data import load_dataset
from ..labels.ssl import features
from ..methods.krr_st import KRRSTConfig
from ..nets import parse_arch
from ..runtime.errors import ConfigError
from ..runtime.rng import generator
from ..synset import LabelSpec, SynSet
from .bridge import image_shape, mark_jax, to_jax, to_torch
from .krr import krr_solve
from .nets import JaxNet, build_jax_net
from .optim import OptaxOptimizer
from .pool import ModelPool, PooledSynthesizer, compiled_step

STREAM_INIT, STREAM_REAL, STREAM_AUG, STREAM_NOISE = 41, 42, 43, 44


# --- the math, as pure functions ------------------------------------------------------------------

def with_bias(f: jax.Array) -> jax.Array:
    """Features [m, d] -> [m, d + 1] with a last column of ones."""
    return jnp.concatenate([f, jnp.ones((f.shape[0], 1), f.dtype)], axis=1)


def krr_st_predict(f_s: jax.Array, f_t: jax.Array, y_s: jax.Array, ridge: float) -> jax.Array:
    """KRR-ST's kernel regression: features f_s [n, d] and f_t [m, d] (a bias column is added),
    targets y_s [n, D] -> predictions [m, D] = K_ts (K_ss + λ I)⁻¹ y_s with λ = ridge · tr(K_ss),
    the ridge held fixed (no gradient flows through λ, as in the reference)."""
    f_s, f_t = with_bias(f_s), with_bias(f_t)
    k_ss = f_s @ f_s.T
    return krr_solve(k_ss, f_t @ f_s.T, y_s, jax.lax.stop_gradient(ridge * jnp.trace(k_ss)))


def krr_st_loss(net: JaxNet, ridge: float, images: jax.Array, targets: jax.Array, flat: jax.Array,
                x_real: jax.Array, y_real: jax.Array) -> jax.Array:
    """One iteration's loss: mean (Ŷ_t − Y_t)² for images [n, C, H, W] with targets [n, D], pool
    network ``flat`` [P] (torch layout; no gradient), real batch x_real [m, C, H, W] with the
    teacher's targets y_real [m, D]."""
    params = jax.lax.stop_gradient(net.params(flat))
    f_t = jax.lax.stop_gradient(net.embed(params, x_real))
    return jnp.mean((krr_st_predict(net.embed(params, images), f_t, targets, ridge) - y_real) ** 2)


def pool_loss(net: JaxNet, flat: jax.Array, images: jax.Array, targets: jax.Array) -> jax.Array:
    """A pool network's online loss: mean (net(images) − targets)² (its head has D outputs)."""
    return jnp.mean((net.apply(net.params(flat), images) - targets) ** 2)


def pool_optimizer(lr: float, momentum: float, weight_decay: float) -> optax.GradientTransformation:
    """torch's SGD with momentum and (coupled) weight decay: the decay joins the gradient first."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum=momentum or None))


@lru_cache(maxsize=None)
def compiled(net: JaxNet, ridge: float, lr: float, momentum: float, weight_decay: float):
    """(jit(value_and_grad(krr_st_loss)) w.r.t. images and targets, the pool's jitted online step,
    its optax transformation); cached, so method instances of one setting share their compilations."""
    tx = pool_optimizer(lr, momentum, weight_decay)
    loss = jax.jit(jax.value_and_grad(partial(krr_st_loss, net, ridge), argnums=(0, 1)))
    return loss, compiled_step(pool_loss, net, tx), tx


def synthesis_optimizer(params, cfg: KRRSTConfig) -> OptaxOptimizer:
    """Adam with lr_img decayed linearly to lr_img / 1000 over the run (the reference's AdamW with
    weight decay 0 and LinearLR from 1 to 1e-3)."""
    return OptaxOptimizer(params, optax.adam(optax.linear_schedule(cfg.lr_img, cfg.lr_img * 1e-3, cfg.iters)))


# --- the method -----------------------------------------------------------------------------------

class KRRST(PooledSynthesizer):
    """KRR-ST as a :class:`~condense.methods.loop.Synthesizer` (see the module docstring)."""

    method_name = "krr-st"

    def __init__(self, cfg: KRRSTConfig, ds, teacher, teacher_sha256: str):
        cfg.validate()
        self.cfg, self.ds, self.teacher, self.teacher_sha256 = cfg, ds, teacher, teacher_sha256
        self.arch = str(parse_arch(cfg.arch))
        n_train = int(ds.x_train.shape[0])
        if cfg.images > n_train:
            raise ConfigError(f"--images {cfg.images} exceeds the {n_train} training images of {cfg.dataset}")
        self.dim = int(teacher.embed_dim)
        c, h, w = image_shape(ds)
        self.outputs = self.dim
        self.twin = build_jax_net(self.arch, c, self.dim, (h, w))
        self.indices = None
        if cfg.init == "real":
            self.indices = torch.randperm(n_train, generator=generator(cfg.seed, 0, STREAM_INIT))[:cfg.images]
            images = ds.x_train[self.indices].float().clone()
        else:
            images = torch.randn((cfg.images, c, h, w), generator=generator(cfg.seed, 0, STREAM_NOISE))
        self.images = images.requires_grad_(True)
        self.targets = self.represent(images).requires_grad_(cfg.learn_targets)
        self.classes = torch.zeros(cfg.images, dtype=torch.int64)
        self.opts = {"synset": synthesis_optimizer(list(self.learnables().values()), cfg)}
        self._loss, step, tx = compiled(self.twin, cfg.ridge, cfg.lr_online, cfg.momentum_online,
                                        cfg.weight_decay_online)
        self.pool = ModelPool(cfg.pool_size, cfg.max_online_steps, cfg.online_batch or cfg.images, cfg.seed, tx,
                              step, self.fresh_network)
        self.real_aug = DSAConfig(strategy="crop+flip", share="view") if cfg.real_aug else None

    def represent(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's representation of images x [N, C, H, W]: [N, D] float32."""
        return features(self.teacher, x)

    # -- the loop's interface --

    def learnables(self) -> dict[str, torch.Tensor]:
        return {"images": self.images, **({"targets": self.targets} if self.cfg.learn_targets else {})}

    def real_batch(self, it: int) -> tuple[jax.Array, jax.Array]:
        """Iteration ``it``'s real images [m, C, H, W] (augmented) and the teacher's targets [m, D]."""
        n = self.ds.x_train.shape[0]
        idx = torch.randperm(n, generator=generator(self.cfg.seed, it, STREAM_REAL))[:self.cfg.batch_real]
        x = self.ds.x_train[idx].float()
        if self.real_aug is not None:
            x = apply_dsa(x, sample_dsa(self.real_aug, x.shape[0], x.shape[1:], generator(self.cfg.seed, it,
                                                                                          STREAM_AUG)))
        return to_jax(x), to_jax(self.represent(x))

    def compute_grads(self, it: int) -> dict[str, float]:
        i = self.pool.pick(it)
        x_real, y_real = self.real_batch(it)
        loss, grads = self._loss(to_jax(self.images), to_jax(self.targets), self.pool.params[i], x_real, y_real)
        self.images.grad = to_torch(grads[0], like=self.images)
        if self.cfg.learn_targets:
            self.targets.grad = to_torch(grads[1], like=self.targets)
        return {"loss": float(loss), "pool_member": i, "member_step": int(self.pool.steps[i])}

    def after_step(self, it: int) -> None:
        self.pool.advance(it, to_jax(self.images), to_jax(self.targets))

    def synset(self, it: int) -> SynSet:
        """The images with their target representations: a set without classes (one group)."""
        s = SynSet(images=self.images.detach().cpu().clone(), classes=self.classes.clone(),
                   labels=self.targets.detach().cpu().clone(), dataset=self.ds.info.name, num_classes=1,
                   method=self.method_name, label_spec=LabelSpec(kind="representation", loss="mse"),
                   transform=self.ds.transform, data=dict(self.ds.meta),
                   config={"method": self.method_name, **asdict(self.cfg), "arch": self.arch,
                           "teacher_sha256": self.teacher_sha256, "representation_dim": self.dim},
                   provenance={"seed": self.cfg.seed, "iteration": it,
                               "init_indices": None if self.indices is None else self.indices.tolist()})
        return mark_jax(s)


def load_teacher(cfg: KRRSTConfig, ds) -> tuple[torch.nn.Module, str]:
    """(the frozen network of the self-supervised teacher ``cfg.teacher``, its file's sha256); one
    ConfigError line unless it is self-supervised and takes ``ds``'s images."""
    from ..labels.teacher_file import load_teacher_file
    from ..labels.teachers import check_inputs, teacher_of_file

    tf = load_teacher_file(cfg.teacher)
    if tf.ssl is None:
        raise ConfigError(f"teacher {cfg.teacher} was trained with labels; krr-st needs a self-supervised one "
                          "(condense teacher --ssl barlow-twins)")
    check_inputs(cfg.teacher, (tf.dataset, tf.transform.describe(), tf.image_shape),
                 (ds.info.name, ds.transform.describe(), ds.info.shape))
    teacher = teacher_of_file(cfg.teacher, tf)
    return tf.net, teacher.source["sha256"]


def run_krr_st(cfg: KRRSTConfig, device=None, *, progress=print, bars: bool = True, evaluate=None) -> SynSet:
    """Synthesize (or resume) ``cfg.out`` with KRR-ST in JAX (JAX's default device)."""
    from ..methods.loop import synthesize

    cfg.validate()
    ds = load_dataset(cfg.dataset, cfg.data_root, zca=cfg.zca, limit_train=cfg.limit_train)
    teacher, sha = load_teacher(cfg, ds)
    method = KRRST(cfg, ds, teacher, sha)
    return synthesize(method, cfg, cfg.out, {"method": "krr-st", "backend": "jax", **asdict(cfg), "arch": method.arch,
                                             "teacher_sha256": sha},
                      progress=progress, bars=bars, evaluate=evaluate)


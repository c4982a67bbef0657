"""`tm`: trajectory matching (MTT) with a learned, positive step size.

An iteration is :meth:`TrajectoryMatching.compute_grads`, on one screen, top to bottom:

1. plan: an expert i, a start epoch s (s < the window's upper bound) and, per student
   step, a batch of the synthetic set with its DSA draw;
2. start and targets: θ_i(s) and θ_i(s + expert_epochs);
3. match: ``syn_steps`` student SGD steps (momentum ``student_momentum``: 0 in MTT, 0.9
   in AST) from θ_i(s) on those batches, the normalised distance of the result to the
   target, and its gradients (pure functions in :mod:`condense.methods.tm_math`, which
   derives the two exact gradient paths);
4. update: the gradients go to the learnables, which the loop steps. Images move by SGD
   (momentum 0.5, ``lr_img``); the student's step size α is learned in one of two
   parametrisations (``lr_param``):

- ``exp`` (condense's default): α = exp(ρ), positive by construction, ρ by SGD with
  η_ρ = lr_lr / lr_init², so that ``lr_lr`` keeps MTT's meaning near lr_init
  (dα ≈ α dρ); away from it the steps in α scale like (α / lr_init)².
- ``direct`` (MTT's): α itself by SGD with lr_lr (momentum 0.5); a step that would make
  it non-positive is rolled back by the loop.

All randomness of iteration ``it`` (expert, start epoch, batch
order, DSA draws) comes from generators keyed by (seed, it, ...), so a resumed run
equals an uninterrupted one.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from functools import partial

import torch
import torch.nn.functional as F

from ..augment import DSAConfig, sample_dsa
from ..config import configclass, setting
from ..config.parts import Augmentation, Data, Loop, Matching, Run, Synthesis
from ..data import load_dataset
from ..runtime.errors import ConfigError, FormatError
from ..nets import FlatLayout, build_net, functional_call
from ..runtime.rng import generator
from ..synset import LabelSpec, SynSet
from ..texture import crop_offsets
from .init import EXPERT_INITS, INITS, expert_logits, expert_selected_images, initial_images
from .tm_math import Step, Target, balance_scale, match_constant_memory, match_exact, perturb_conv_weights
from ..labels.recipe import expert_label_logits

STREAM_PICK, STREAM_ORDER, STREAM_DSA = 0, 1, 2
MEMORY_MODES = ("exact", "constant")
LABEL_MODES = ("hard", "expert", "expert-once", "learned")
LR_PARAMS = ("exp", "direct")
AST_TERMS = ("balance-loss", "middle-loss", "weight-perturb")
STREAM_PERTURB, STREAM_TEXTURE = 3, 4
TEXTURE_SAMPLES = 1  # crops of every canvas per student step (MTT's --canvas_samples default)


@configclass(Data, Run, Loop, Synthesis, Matching, Augmentation, part="tm",
             # dataset, arch, normalisation and ZCA are the experts': the store says them
             drop=("dataset", "arch", "val_size", "zca", "teacher", "batch_real", "min_scale", "flip"),
             defaults={"iters": 500, "lr_img": 100.0, "out": "runs/tm.h5"},
             helps={"data_root": "folder holding the dataset files (normalisation and ZCA come from the experts)",
                    "dsa_share": "DSA draws of the student's steps: image = per-image parameters, one group per "
                                 "step (MTT); batch = one draw per batch (condense 0.1)",
                    "init": "initial images: real, noise, correct (DATM: ones an expert gets right), confident "
                            "(the expert's most confident) or kmeans (AST's representative init)"},
             choices={"init": INITS})
class TMConfig:
    lr_param: str | None = setting(None, "the learned step size as exp(rho) (default: exp, positive by "
                                         "construction) or itself (direct: MTT)", choices=LR_PARAMS)
    student_momentum: float | None = setting(None, "SGD momentum of the student's steps (default 0: MTT; AST: 0.9)",
                                             ge=0, lt=1)
    labels: str = setting("hard", "labels: hard, expert (TESLA: the expert's soft labels, recomputed every "
                                  "iteration from the target epoch), expert-once (fixed at the start) or learned (DATM)",
                          choices=LABEL_MODES)
    lr_labels: float = setting(2.0, "learning rate of learned labels (DATM's lr_y; SGD, momentum 0.9)", gt=0)
    window_growth: list[int] | None = setting(None, "DATM's growing start window: START_MAX,END_ITER (the upper "
                                                    "start epoch grows linearly from START_MAX at iteration 0 to "
                                                    "--max-start-epoch at END_ITER; default: a fixed window)",
                                              gt=0, metavar="START_MAX,END_ITER")
    ast: list[str] | None = setting(None, "AST's distillation terms: balance-loss (balanced inner loss), "
                                          "middle-loss (intermediate matching), weight-perturb (perturbed start "
                                          "weights)", choices=AST_TERMS, metavar="TERMS")
    memory: str = setting("exact", "gradients: exact (unrolled graph) or constant (adjoint: exact, memory "
                                   "independent of --syn-steps)", choices=MEMORY_MODES)
    ema: float = setting(0.0, "decay of FTD's moving average of the images (0: off)", ge=0, lt=1)
    texture: int | None = setting(None, "distil tileable textures (MTT's --texture --canvas_size N): each image "
                                        "is a canvas of N x N images, and every student step trains on a random "
                                        "crop of it that wraps around its edges", gt=0, le=64, metavar="N")

    def validate(self, epochs_stored: int | None = None) -> None:
        """What the declarations cannot say: relations between settings, and the store's length."""
        if not self.trajectories:
            raise ConfigError("tm needs --trajectories STORE (record one with `condense buffer`)")
        check_window(self, epochs_stored)
        if self.texture and self.init not in ("noise", "real"):
            raise ConfigError(f"--texture starts from noise or from real images tiled over the canvas, not --init "
                              f"{self.init}")
        if self.texture and self.labels != "hard":
            raise ConfigError("--texture trains on crops of canvases: the experts label images, not canvases "
                              "(use --labels hard)")
        if self.window_growth is not None and not (
                len(self.window_growth) == 2 and self.min_start_epoch < self.window_growth[0] <= self.max_start_epoch):
            raise ConfigError("--window-growth is START_MAX,END_ITER with --min-start-epoch < START_MAX <= "
                              f"--max-start-epoch, got {self.window_growth}")

    # The names the method reads (and 0.4.0 configs used): derived, so each is declared once above.
    balance_loss = property(lambda self: "balance-loss" in (self.ast or ()))
    middle_loss = property(lambda self: "middle-loss" in (self.ast or ()))
    weight_perturb = property(lambda self: "weight-perturb" in (self.ast or ()))
    window_schedule = property(lambda self: "linear" if self.window_growth else "fixed")
    window_start_max = property(lambda self: self.window_growth[0] if self.window_growth else None)
    window_end_iter = property(lambda self: self.window_growth[1] if self.window_growth else 1000)
    label_refresh = property(lambda self: "once" if self.labels == "expert-once" else None)

    def identity(self) -> dict:
        """The settings under their 0.4.0 names: the run identity that checkpoints written then carry."""
        d = {k: v for k, v in asdict(self).items() if k not in ("ast", "window_growth")}
        d.update({k: getattr(self, k) for k in ("balance_loss", "middle_loss", "weight_perturb", "window_schedule",
                                                "window_start_max", "window_end_iter", "label_refresh")})
        d["labels"] = "expert" if self.labels == "expert-once" else self.labels
        return d


def check_window(cfg, epochs_stored: int | None = None) -> None:
    """The expert window of a config with the :class:`~condense.config.parts.Matching` part, against itself
    and the epochs a store holds (tm; s2d --finetune tm)."""
    if not cfg.min_start_epoch < cfg.max_start_epoch:
        raise ConfigError(f"need --min-start-epoch < --max-start-epoch, got {cfg.min_start_epoch} and "
                          f"{cfg.max_start_epoch}")
    if epochs_stored is not None and cfg.max_start_epoch + cfg.expert_epochs > epochs_stored:
        raise ConfigError(f"--max-start-epoch ({cfg.max_start_epoch}) + --expert-epochs ({cfg.expert_epochs}) "
                          f"exceeds the {epochs_stored} epochs stored in {cfg.trajectories}")


def dataset_of_store(store, cfg: TMConfig):
    """The dataset processed exactly as the store's experts saw it; refused if it differs here."""
    meta, data = store.meta, store.meta.get("data", {})
    name = meta["dataset"]
    zca = meta["transform"]["kind"] == "zca"
    ds = load_dataset(name, cfg.data_root, zca=zca, zca_eps=meta["transform"].get("zca_eps") or 0.1,
                      val_size=data.get("val_size"), val_seed=data.get("val_seed", 0), limit_train=cfg.limit_train)
    if ds.transform.describe() != meta["transform"]:
        raise ConfigError(f"{cfg.trajectories} was recorded with another normalisation/ZCA than {name} has here "
                          f"({meta['transform']} vs {ds.transform.describe()})")
    return ds


class TrajectoryMatching:
    """The tm method as a :class:`~condense.methods.loop.Synthesizer`."""

    def __init__(self, cfg: TMConfig, store, ds, device: torch.device):
        self.cfg, self.store, self.ds, self.device = cfg, store, ds, device
        self.arch = arch = store.meta["arch"]
        c, (h, w) = ds.info.channels, ds.info.image_size
        self.net = build_net(arch, c, ds.info.num_classes, (h, w), generator=generator(cfg.seed, 0)).to(device)
        FlatLayout.of(self.net).check_compatible(store.layout)
        self.conv_slices = [(o, o + math.prod(sh)) for o, sh in zip(store.layout.offsets, store.layout.shapes)
                            if len(sh) == 4]
        teacher = expert_epoch(store, 0, store.epochs).to(device)  # DATM/AST/TESLA's expert: expert 0, final epoch
        predict = partial(functional_call, self.net, teacher)
        k = ds.info.num_classes
        self.crop = (h, w) if cfg.texture else None
        if cfg.texture:
            if ds.transform.kind == "zca":
                raise ConfigError(f"--texture cannot use a ZCA store ({cfg.trajectories}): whitening is defined "
                                  "on the dataset's image size, not on a canvas")
            images, self.classes, self.indices = canvases(ds.x_train, ds.y_train, k, cfg.ipc, cfg.init, cfg.seed,
                                                          cfg.texture)
        elif cfg.init in EXPERT_INITS:
            images, self.classes, self.indices = expert_selected_images(ds.x_train, ds.y_train, k, cfg.ipc, cfg.init,
                                                                        cfg.seed, predict)
        else:
            images, self.classes, self.indices = initial_images(ds.x_train, ds.y_train, k, cfg.ipc, cfg.init, cfg.seed)
        self.images = images.to(device).requires_grad_(True)
        self.lr_init = cfg.lr_init or float(store.meta["protocol"]["lr"])
        self.direct_lr = cfg.lr_param == "direct"
        self.lr_name = "lr" if self.direct_lr else "log_lr"
        start_value, step = (self.lr_init, cfg.lr_lr) if self.direct_lr else (math.log(self.lr_init),
                                                                            cfg.lr_lr / self.lr_init ** 2)
        self.lr_param = torch.tensor(start_value, device=device).requires_grad_(True)
        self.momentum = cfg.student_momentum or 0.0
        self.opts = {"images": torch.optim.SGD([self.images], lr=cfg.lr_img, momentum=0.5),
                     self.lr_name: torch.optim.SGD([self.lr_param], lr=step, momentum=0.5)}
        if cfg.labels == "hard":
            self.labels, self.loss_fn = self.classes.to(device), F.cross_entropy
        else:
            self.labels = self._expert_label_logits(self.images.detach()).to(device)
            self.loss_fn = soft_cross_entropy
            if cfg.labels == "learned":
                self.labels.requires_grad_(True)
                self.opts["labels"] = torch.optim.SGD([self.labels], lr=cfg.lr_labels, momentum=0.9)
        self.ema = self.images.detach().clone() if cfg.ema else None
        self.dsa = DSAConfig(strategy=cfg.dsa_strategy, share=cfg.dsa_share) if cfg.dsa else None

    def _expert_label_logits(self, images: torch.Tensor) -> torch.Tensor:
        """[N, K] DATM's labels of ``images`` by the final-epoch experts (:func:`expert_label_logits`)."""
        predicts = [partial(functional_call, self.net, expert_epoch(self.store, i, self.store.epochs).to(self.device))
                    for i in range(len(self.store))]
        return expert_label_logits(predicts, images, self.classes.to(self.device))

    # -- one iteration ---------------------------------------------------------------------------
    def compute_grads(self, it: int) -> dict[str, float]:
        """Iteration ``it`` of the module docstring, top to bottom: plan -> start and targets -> match ->
        gradients on the learnables (the loop then steps each by its optimiser)."""
        cfg, store, dev = self.cfg, self.store, self.device
        n, m, size = cfg.syn_steps, cfg.expert_epochs, len(self.images)
        # 1. plan: expert i, start epoch s below the window's bound, and per student step a batch of the set
        # (MTT: a fresh permutation whenever the last is used up, popped from the end) with its DSA draw
        pick = generator(cfg.seed, it, 0, STREAM_PICK)
        expert = int(torch.randint(len(store), (1,), generator=pick))
        s = int(torch.randint(cfg.min_start_epoch, self.window(it), (1,), generator=pick))
        steps = []
        for t, idx in enumerate(student_batches(cfg.seed, it, n, size, cfg.batch_syn)):
            idx = idx.to(dev)
            views, shape, crops = len(idx), tuple(self.images.shape[1:]), None
            if self.crop is not None:  # textures: a crop of every canvas, wrapping at the edges (MTT's 1 sample)
                views, shape = TEXTURE_SAMPLES * len(idx), (shape[0], *self.crop)
                crops = crop_offsets(views, self.images.shape[2:], generator(cfg.seed, it, t, STREAM_TEXTURE))
            draw = None if self.dsa is None else sample_dsa(self.dsa, views, shape,
                                                            generator(cfg.seed, it, t, STREAM_DSA))
            steps.append(Step(idx, draw, crops, self.crop))
        # 2. start θ_i(s) (AST: its conv weights perturbed); targets θ_i(s + M) after N steps (AST: and
        # θ_i(s + k) after k⌊N/M⌋)
        start = expert_epoch(store, expert, s).to(dev)
        if cfg.weight_perturb:
            start = perturb_conv_weights(start, self.conv_slices, generator(cfg.seed, it, 0, STREAM_PERTURB))
        targets = [Target(n, expert_epoch(store, expert, s + m).to(dev))]
        if cfg.middle_loss:
            targets += [Target((n // m) * k, expert_epoch(store, expert, s + k).to(dev)) for k in range(1, m)]
        if self.refreshes_labels:  # TESLA: the final target's logits on the current images
            with torch.no_grad():
                self.labels = expert_logits(partial(functional_call, self.net, targets[0].params), self.images)
        # 3. match: the student's N steps from the start; ℓ = Σ_k w_k ‖θ_{n_k} − θ*_k‖² / ‖θ_0 − θ*_k‖² and ∂ℓ
        scale = balance_scale(s, cfg.max_start_epoch) if cfg.balance_loss else 1.0
        loss, grads = self.match(start, targets, steps, scale)
        # 4. update: ∂ℓ onto the images, α's parameter and DATM's labels (the loop steps their optimisers)
        for name, tensor in self.learnables().items():
            tensor.grad = grads[name]
        return {"loss": loss, "lr": self.learned_lr(), "expert": expert, "start_epoch": s,
                "inner_images": sum(len(step.indices) for step in steps)}

    def window(self, it: int) -> int:
        """Upper bound (exclusive) of the start epoch at iteration ``it`` (DATM's linear widening)."""
        cfg = self.cfg
        if cfg.window_schedule == "fixed":
            return cfg.max_start_epoch
        grown = cfg.window_start_max + (cfg.max_start_epoch - cfg.window_start_max) * it // cfg.window_end_iter
        return min(grown, cfg.max_start_epoch)

    def match(self, start: torch.Tensor, targets: list[Target], steps: list[Step],
              scale: float) -> tuple[float, dict[str, torch.Tensor]]:
        """ℓ of the student's ``steps`` from ``start`` [P] against ``targets``, with its inner loss × ``scale``,
        and ∂ℓ for every learnable by name: autograd through the unrolled graph (``--memory exact``) or the
        adjoint walk (``constant``) of :mod:`~condense.methods.tm_math`. A backend replaces this."""
        loss_fn = partial(scaled, self.loss_fn, scale)
        learn = self.learnables()
        if self.cfg.memory == "exact":
            loss = match_exact(self.net, start, targets, self.images, self.labels, self.student_lr(), steps, loss_fn,
                               self.momentum)
            return float(loss.detach()), dict(zip(learn, torch.autograd.grad(loss, list(learn.values()))))
        lr = self.learned_lr()
        loss, grads = match_constant_memory(self.net, start, targets, self.images, self.labels, lr, steps, loss_fn,
                                            self.momentum)
        grads[self.lr_name] = grads.pop("lr") * (1.0 if self.direct_lr else lr)  # dℓ/dρ = dℓ/dα · α
        return loss, grads

    # -- Synthesizer -------------------------------------------------------------------------------
    def student_lr(self) -> torch.Tensor:
        """α as a function of its parameter (graph attached)."""
        return self.lr_param if self.direct_lr else self.lr_param.exp()

    def learned_lr(self) -> float:
        return float(self.student_lr().detach())

    def learnables(self) -> dict[str, torch.Tensor]:
        out = {"images": self.images, self.lr_name: self.lr_param}
        if self.labels.requires_grad:
            out["labels"] = self.labels
        return out

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.opts

    @property
    def refreshes_labels(self) -> bool:
        return self.cfg.labels == "expert" and (self.cfg.label_refresh or "iteration") == "iteration"

    def after_step(self, it: int) -> None:
        if self.ema is not None:
            with torch.no_grad():
                self.ema.mul_(self.cfg.ema).add_(self.images.detach(), alpha=1 - self.cfg.ema)

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {} if self.ema is None else {"ema": self.ema}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.ema is not None:
            self.ema.copy_(state["ema"])

    def validate_state(self) -> str | None:
        lr = self.learned_lr()
        return None if math.isfinite(lr) and 0 < lr < 1e3 * self.lr_init else f"learned lr {lr:.4g} out of range"

    def synset(self, it: int) -> SynSet:
        images = (self.ema if self.ema is not None else self.images).detach().cpu().clone()
        data = dict(self.ds.meta)
        if self.crop is not None:
            data["texture"] = {"crop": list(self.crop), "samples": TEXTURE_SAMPLES}
        s = SynSet.hard(images, self.classes.clone(), dataset=self.ds.info.name, num_classes=self.ds.info.num_classes,
                        method="tm", lr=self.learned_lr(), transform=self.ds.transform, data=data,
                        config={"method": "tm", **asdict(self.cfg), "arch": self.arch},
                        provenance={"seed": self.cfg.seed, "iteration": it, "store": str(self.store.folder),
                                    "store_key": self.store.meta["store_key"],
                                    "store_dsa_share": self.store.dsa_share,
                                    "init_indices": None if self.indices is None else self.indices.tolist()})
        if self.cfg.labels != "hard":
            # TESLA's per-iteration labels belong to one random expert and epoch: the set keeps
            # the final-epoch experts' labels of its final images instead (as --labels expert-once does)
            labels = self._expert_label_logits(images.to(self.device)) if self.refreshes_labels else self.labels
            s = s.with_labels(labels.detach().cpu().clone(), LabelSpec(kind="logits", loss="kl", temperature=1.0))
        return s


def student_batches(seed: int, it: int, steps: int, size: int, batch: int | None) -> list[torch.Tensor]:
    """The indices into a set of ``size`` of each of ``steps`` student steps at iteration ``it``: MTT's
    batches of ``batch`` (None: all), a fresh permutation whenever the last is used up, popped from its end."""
    out, chunks = [], []
    for t in range(steps):
        if not chunks:
            chunks = list(torch.randperm(size, generator=generator(seed, it, t, STREAM_ORDER)).split(batch or size))
        out.append(chunks.pop())
    return out


def canvases(x_train: torch.Tensor, y_train: torch.Tensor, num_classes: int, ipc: int, init: str, seed: int,
             size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(canvases [K · ipc, C, size · H, size · W], classes, source indices or None): each canvas tiled
    from size² images of its class drawn as :func:`~condense.methods.init.initial_images` draws
    ipc · size² of them (real, or noise), tile (r, q) of canvas i being image i · size² + r · size + q."""
    images, _, indices = initial_images(x_train, y_train, num_classes, ipc * size * size, init, seed)
    c, h, w = images.shape[1:]
    grid = images.view(num_classes * ipc, size, size, c, h, w).permute(0, 3, 1, 4, 2, 5)
    classes = torch.arange(num_classes).repeat_interleave(ipc)
    return grid.reshape(num_classes * ipc, c, size * h, size * w).contiguous(), classes, indices


def expert_epoch(store, i: int, e: int) -> torch.Tensor:
    """Expert ``i``'s parameters after epoch ``e``, refused (one line) when not finite: every
    iteration drawing it would be skipped, and a run of nothing but skipped steps teaches nothing."""
    params = store.epoch(i, e)
    if not bool(torch.isfinite(params).all()):
        raise FormatError(f"expert {i} of the store {store.folder} has non-finite parameters at epoch {e}")
    return params


def soft_cross_entropy(logits: torch.Tensor, label_logits: torch.Tensor) -> torch.Tensor:
    """DATM's inner loss: −Σ softmax(label_logits) · log_softmax(logits), averaged over the batch."""
    return -(F.softmax(label_logits, dim=1) * F.log_softmax(logits, dim=1)).sum(1).mean()


def scaled(loss_fn, scale: float, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return scale * loss_fn(logits, targets)


def open_store_for(cfg: TMConfig):
    """(store, dataset) of a validated ``cfg``: the store has a finished expert and enough epochs."""
    from trajectories import open_store

    cfg.validate()
    store = open_store(cfg.trajectories)
    if len(store) == 0:
        raise ConfigError(f"{cfg.trajectories} holds no finished expert yet")
    cfg.validate(store.epochs)
    return store, dataset_of_store(store, cfg)


def run_tm(cfg: TMConfig, device: torch.device, *, progress=print, bars: bool = True, evaluate=None) -> SynSet:
    """Synthesize (or resume) the set ``cfg.out`` by trajectory matching."""
    from .loop import synthesize

    store, ds = open_store_for(cfg)
    method = TrajectoryMatching(cfg, store, ds, device)
    return synthesize(method, cfg, cfg.out, {"method": "tm", **cfg.identity()}, progress=progress, bars=bars,
                      evaluate=evaluate)

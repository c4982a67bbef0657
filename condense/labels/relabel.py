"""Soft labels from a teacher: one per image (static) or one per augmented view (per epoch).

Per-view labels follow SRe2L/FKD relabelling, made exact: the views are those that
evaluation will train on. Image i in epoch e is seen as the view drawn from
(view_seed, e) (:func:`condense.augment.view_draw`), so its stored label ``labels[e, i]``
is the teacher's prediction on exactly that view, for every run, batch order and batch
size. The labels are logits [V, N, K] (V = ``epochs``) with the labelling temperature.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from ..runtime.progress import bar

from condense.augment import DSAConfig
from condense.augment import views as views_of  # `views` is relabel's mode argument
from condense.runtime.errors import ConfigError
from condense.synset import LabelSpec, SynSet

from .teachers import Teacher

VIEW_MODES = ("static", "per-epoch")


def relabel(s: SynSet, teacher: Teacher, *, views: str = "static", epochs: int = 300, temperature: float = 1.0,
            view_seed: int = 0, strategy: str = "color_crop_cutout_flip_scale_rotate",
            progress: bool = False, labeller=None) -> SynSet:
    """``s`` with the teacher's soft labels (logits, KL loss at ``temperature``).

    views: ``static`` -> labels [N, K] on the clean images; ``per-epoch`` -> [epochs, N, K]
    on the views of epochs 0..epochs-1 under ``strategy`` (DSA's, or ``rrc+flip``: SRe2L/FKD's
    random-resized crop and flip) seeded by ``view_seed``. ``labeller`` replaces
    :func:`label_images` (same signature), e.g. to spread the epochs over devices.
    """
    labels, spec = (labeller or label_images)(s.images, teacher, s.num_classes, views=views, epochs=epochs,
                                temperature=temperature, view_seed=view_seed, strategy=strategy, progress=progress)
    provenance = dict(s.provenance, labels={"teacher": teacher.source, "views": views, "temperature": temperature,
                                            **({"view_epochs": epochs, "view_seed": view_seed, "strategy": strategy}
                                               if views != "static" else {})})
    out = replace(s, labels=labels, label_spec=spec, label_payload=None, provenance=provenance)
    out.validate()
    return out


def label_images(images: torch.Tensor, teacher: Teacher, num_classes: int, *, views: str = "static", epochs: int = 300,
                 temperature: float = 1.0, view_seed: int = 0, strategy: str = "color_crop_cutout_flip_scale_rotate",
                 progress: bool = False, first_epoch: int = 0) -> tuple[torch.Tensor, LabelSpec]:
    """The teacher's logits for ``images`` [N, C, H, W] and their meaning: [N, K] (static) or
    [epochs - first_epoch, N, K] on the views of epochs first_epoch..epochs-1 (per-epoch; see
    :func:`relabel`). Images and teacher may live on any device; labels come back on the CPU."""
    if views not in VIEW_MODES:
        raise ConfigError(f"--views must be one of {', '.join(VIEW_MODES)}, got {views!r}")
    if not temperature > 0:
        raise ConfigError(f"--temperature must be positive, got {temperature}")
    images = images.float()
    if views == "static":
        return teacher.logits(images, temperature), LabelSpec(kind="logits", loss="kl", temperature=temperature)
    if epochs < 1:
        raise ConfigError(f"--view-epochs must be >= 1, got {epochs}")
    config = DSAConfig(strategy=strategy)
    labels = torch.empty(epochs - first_epoch, images.shape[0], num_classes)
    for e in bar(iterable=range(first_epoch, epochs), desc="label views", unit="epoch", disable=not progress):
        labels[e - first_epoch] = teacher.logits(views_of(images, config, view_seed, e), temperature).cpu()
    return labels, per_view_spec(temperature, view_seed, strategy)


def per_view_spec(temperature: float, view_seed: int, strategy: str) -> LabelSpec:
    """What per-view teacher logits mean: KL at ``temperature`` on the ``strategy`` views of ``view_seed``."""
    return LabelSpec(kind="logits", loss="kl", temperature=temperature, view_mode="per-view",
                     view_seed=int(view_seed), view_strategy=strategy)

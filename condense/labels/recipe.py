"""How a set's labels were made, as plain data, and the same labels made for other images.

DD-Ranking's fair scores compare a set with random real images trained under the same
protocol, labels included: random real gets labels made the same way on its own images and
views. :func:`recipe_of` reads how from a set's provenance, :func:`remake` makes them.

A recipe is canonical JSON (it is part of evaluation job keys), one of:

- a teacher (``condense labels``): ``{"teacher": FILE, "sha256": ...}``, a store's experts
  ``{"store": DIR, "store_key": ..., "experts": [...], "epoch": E, "arch": ...}`` or a CV-DD
  committee ``{"committee": [...], "prior": [...], "temperature": τ, "weights": [...]}``,
  each with ``views``, ``temperature`` and, for per-view labels, ``epochs``, ``seed`` and
  ``strategy``;
- the experts' logits (tm ``--labels expert|expert-once``, TESLA; DATM's initial labels):
  ``{"expert_logits": DIR, "store_key": ..., "arch": ...}``: per image, the mean logits of
  the final-epoch experts that classify it correctly, else the first expert's;

plus ``"codecs"`` (and ``"projector"``'s fit) when the labels were compressed afterwards: the
same codecs then compress random real's labels. A teacher-file recipe without codecs is the
JSON condense 0.6 wrote, so earlier evaluation job logs stay valid.

Labels learned jointly with the images (DATM's, FRePo's targets) cannot be made for other
images: :func:`recipe_of` then returns the closest recipe (DATM: the experts' logits its
labels started from; FRePo: hard labels) with the reason, which the report prints.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable

import torch

from condense.codecs import parse_codec
from condense.runtime.errors import ConfigError, FormatError
from condense.synset import LabelSpec, SynSet

Predict = Callable[[torch.Tensor], torch.Tensor]


def recipe_of(s: SynSet) -> tuple[dict[str, Any] | None, str | None]:
    """(recipe or None for hard labels, why random real is labelled otherwise than the set, or None
    when it is labelled exactly as the set was). FormatError (one line) for malformed provenance."""
    if s.label_spec.kind == "hard":
        return None, None
    try:  # the provenance of a shared set may be anything: a malformed one is one line
        recipe, why = _recipe(s)
        codecs = [str(c["codec"]) for c in s.provenance.get("label_codecs") or []]
        for c in codecs:
            parse_codec(c)
        if recipe is not None and codecs:
            recipe["codecs"] = codecs
            if any(c.startswith("projector") for c in codecs):  # fitted as the set's projector was
                run = s.provenance.get("labels_run") or {}
                recipe["projector"] = {"steps": int(run.get("projector_steps", 1500)),
                                       "lr": float(run.get("projector_lr", 3e-3))}
                if not (recipe["projector"]["steps"] > 0 and recipe["projector"]["lr"] > 0):
                    raise ValueError("projector fit out of range")
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError, ConfigError):
        raise FormatError("its labels' provenance is malformed (the teacher, views and codecs that made them)") from None
    return recipe, why


def _recipe(s: SynSet) -> tuple[dict[str, Any] | None, str | None]:
    made = s.provenance.get("labels")
    if isinstance(made, dict) and isinstance(made.get("teacher"), dict):
        recipe = {**teacher_part(made["teacher"]), "views": str(made["views"]),
                  "temperature": float(made["temperature"])}
        if recipe["views"] not in ("static", "per-epoch") or not 0 < recipe["temperature"] < float("inf"):
            raise ValueError("views or temperature out of range")
        if made["views"] != "static":
            recipe.update(epochs=int(made["view_epochs"]), seed=int(made["view_seed"]),
                          strategy=str(made.get("strategy") or s.label_spec.view_strategy))
        return recipe, None
    mode = (s.config or {}).get("labels")
    if s.method == "tm" and mode in ("expert", "expert-once", "learned"):
        recipe = {"expert_logits": str(s.provenance["store"]), "store_key": str(s.provenance["store_key"]),
                  "arch": str(s.config["arch"])}
        if mode == "learned":
            return recipe, ("its labels were learned with the images (DATM): random real is labelled by the "
                            "experts' logits they started from")
        return recipe, None
    if s.label_spec.kind == "regression":
        return None, "its regression targets were learned with the images (FRePo): random real trains on hard labels"
    return None, (f"its {s.label_spec.kind} labels record nothing that could make them for other images "
                  "(imported, or made outside condense): random real trains on hard labels")


def teacher_part(source: dict[str, Any]) -> dict[str, Any]:
    """The part of a recipe that names a teacher (``Teacher.source``): files with hashes, or a store and its key."""
    if "committee" in source:
        return {"committee": [{"file": str(m["file"]), "sha256": str(m["sha256"])} for m in source["committee"]],
                "prior": [float(v) for v in source["prior"]], "temperature_vote": float(source["temperature"])}
    if "file" in source:
        return {"teacher": str(source["file"]), "sha256": str(source["sha256"])}
    return {"store": str(source["store"]), "store_key": str(source["store_key"]),
            "experts": [int(e) for e in source["experts"]], "epoch": int(source["epoch"]), "arch": str(source["arch"])}


def teacher_source(recipe: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`teacher_part`: what :func:`~condense.labels.teachers.teacher_of_source` builds."""
    if "committee" in recipe:
        return {"committee": recipe["committee"], "prior": recipe["prior"], "temperature": recipe["temperature_vote"]}
    if "teacher" in recipe:
        return {"file": recipe["teacher"], "sha256": recipe["sha256"]}
    return {k: recipe[k] for k in ("store", "store_key", "experts", "epoch", "arch")}


def recipe_files(recipe: dict[str, Any]) -> list[str]:
    """The files and folders a recipe reads (to check before any training starts)."""
    if "committee" in recipe:
        return [m["file"] for m in recipe["committee"]]
    return [recipe[k] for k in ("teacher", "store", "expert_logits") if k in recipe]


def describe(recipe: dict[str, Any] | None) -> str:
    """A short name of a recipe for tables: 'hard', 'teacher T, per-epoch rrc+flip', ..."""
    if recipe is None:
        return "hard"
    if "expert_logits" in recipe:
        text = f"experts' logits ({os.path.basename(recipe['expert_logits'].rstrip('/'))})"
    else:
        if "committee" in recipe:  # equal priors vote with equal weights: INFER's mean of logits
            who = ("mean of " if len(set(recipe["prior"])) == 1 else "committee ") + "+".join(
                os.path.basename(m["file"]) for m in recipe["committee"])
        elif "teacher" in recipe:
            who = f"teacher {os.path.basename(recipe['teacher'])}"
        else:
            e = recipe["experts"]
            who = (f"store {os.path.basename(recipe['store'].rstrip('/'))} expert{'s' if len(e) > 1 else ''} "
                   f"{e[0]}{f'-{e[-1]}' if len(e) > 1 else ''}")
        views = "static" if recipe["views"] == "static" else f"{recipe['views']} {recipe['strategy']}"
        text = f"{who}, {views}"
    return text + "".join(f" > {c}" for c in recipe.get("codecs", []))


@functools.lru_cache(maxsize=4)
def _teacher(source_json: str, num_classes: int, image_shape: tuple[int, ...]):
    from .teachers import teacher_of_source

    return teacher_of_source(json.loads(source_json), num_classes, image_shape)


def expert_label_logits(predicts: list[Predict], images: torch.Tensor, classes: torch.Tensor,
                        batch: int = 1024) -> torch.Tensor:
    """DATM's soft labels: per image of ``images`` [N, C, H, W], the mean logits [N, K] of the
    experts (``predicts``) that classify it as its class ``classes`` [N]; the first expert's
    where none does."""
    total = count = first = None
    for predict in predicts:
        with torch.no_grad():
            z = torch.cat([predict(images[i:i + batch]) for i in range(0, images.shape[0], batch)])
        ok = (z.argmax(1) == classes.to(z.device)).unsqueeze(1).to(z.dtype)
        first = z if first is None else first
        total = z * ok if total is None else total + z * ok
        count = ok if count is None else count + ok
    return torch.where(count > 0, total / count.clamp_min(1), first)


def store_predicts(folder: str, store_key: str, arch: str, num_classes: int, image_shape: tuple[int, ...]
                   ) -> list[Predict]:
    """The final-epoch experts of a store as functions of images (one-line ConfigError when the
    store is not the one recorded). The modules stay in their default mode, as tm's are when it
    computes the experts' logits (the same numbers for every norm but BatchNorm)."""
    from condense.nets import build_net
    from condense.runtime.errors import ConfigError
    from trajectories.store import open_store

    store = open_store(folder)
    if store.meta.get("store_key") != store_key:
        raise ConfigError(f"store {folder} is not the one recorded (its store key differs)")
    c, h, w = image_shape
    out = []
    for i in range(len(store)):
        net = build_net(arch, c, num_classes, (h, w))
        store.layout.load_into(net, store.epoch(i, store.epochs))
        out.append(net)
    return out


@functools.lru_cache(maxsize=2)
def _experts(folder: str, store_key: str, arch: str, num_classes: int, image_shape: tuple[int, ...]):
    return store_predicts(folder, store_key, arch, num_classes, image_shape)


def remake(recipe: dict[str, Any], images: torch.Tensor, classes: torch.Tensor, *, num_classes: int, dataset: str = "", progress: bool = False) -> tuple[torch.Tensor, LabelSpec]:
    """Labels for ``images`` [N, C, H, W] (classes [N]) made as ``recipe`` says, and their spec:
    the same teacher, views, temperature and codecs as the set's."""
    shape = tuple(int(v) for v in images.shape[1:])
    if "expert_logits" in recipe:
        nets = _experts(recipe["expert_logits"], recipe["store_key"], recipe["arch"], num_classes, shape)
        labels = expert_label_logits(list(nets), images.float(), classes)
        spec = LabelSpec(kind="logits", loss="kl", temperature=1.0)
    else:
        from .relabel import label_images

        teacher = _teacher(json.dumps(teacher_source(recipe), sort_keys=True), num_classes, shape)
        kw = {} if recipe["views"] == "static" else {"epochs": recipe["epochs"], "view_seed": recipe["seed"],
                                                     "strategy": recipe["strategy"]}
        labels, spec = label_images(images, teacher, num_classes, views=recipe["views"],
                                    temperature=recipe["temperature"], progress=progress, **kw)
    if recipe.get("codecs"):
        from .compress import compress
        from .projector import ProjectorFit

        fit = ProjectorFit(**recipe.get("projector", {}))
        s = SynSet.hard(images, classes, dataset=dataset, num_classes=num_classes, method="random").with_labels(
            labels, spec)
        for codec in recipe["codecs"]:
            s = compress(s, codec, fit)
        labels, spec = s.labels, s.label_spec
    return labels, spec

"""Recover speed of sre2l against a naive per-layer-hook implementation, and peak memory.

    python benchmarks/bench_recover.py --arch convnet:norm=batch,width=64 --ipc 10 --iters 30
    python benchmarks/bench_recover.py --arch resnet18 --ipc 10 --iters 10
    python benchmarks/bench_recover.py --device cuda --arch resnet18 --size 64 --classes 200 --ipc 10

Both compute the same loss and gradient (tests/test_decoupled.py checks it to 1e-5):

- naive: SRe2L's recover loop shape. Per batch: its own leaf tensor and Adam, its crop,
  flip and roll, one teacher forward with a forward hook on every BatchNorm layer computing
  its term as the reference does (mean over (0, 2, 3), variance of a permuted, contiguous
  copy), CE + r_bn · Σ terms, backward, step.
- condense: whole batches grouped into teacher forwards of up to ``chunk`` images (the
  teacher is in eval mode, so a forward does not mix batches), the statistics of a
  group's batches in one fused var_mean per layer, one backward per group, one Adam step
  for everything (elementwise, so each batch moves as it would alone).

The teacher has random weights and BN statistics (speed does not depend on their values).
Prints iterations per second (one iteration = one step of every batch), the speed-up and
each implementation's peak resident (and CUDA) memory.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from condense.augment import DSAConfig, apply_dsa, sample_dsa
from condense.data.transform import PixelTransform
from condense.labels.teacher_file import TeacherFile
from condense.methods.sre2l import STREAM_AUG, STREAM_JITTER, SRe2L, SRe2LConfig, bn_layers
from condense.nets import build_net
from condense.runtime.perf import PeakMemory
from condense.runtime.rng import generator
from condense.runtime.perf import tune_cpu_allocator


def make_teacher(arch: str, channels: int, classes: int, size: int, folder: Path) -> str:
    net = build_net(arch, channels, classes, (size, size), generator=generator(0))
    g = generator(1)
    for m in bn_layers(net):
        m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    t = TeacherFile(net=net.eval(), arch=arch, dataset="fashion-mnist" if channels == 1 else "cifar10",
                    num_classes=classes, image_shape=(channels, size, size), class_names=(),
                    transform=PixelTransform("normalize", (0.5,) * channels, (0.25,) * channels), accuracy=0.0)
    return str(t.save(folder / "teacher.h5"))


class Naive:
    """SRe2L's recover loop: every batch its own leaf tensor and Adam, its own augmentation,
    forward, per-layer hooks computing the BN terms, backward and step."""

    def __init__(self, method: SRe2L):
        self.m = method
        self.params = [p.detach().clone().requires_grad_(True) for p in torch.split(method.images, method.sizes)]
        self.opts = [torch.optim.Adam([p], lr=method.cfg.lr_img, betas=(0.5, 0.9)) for p in self.params]
        self.classes = torch.split(method.classes.to(method.images.device), method.sizes)

    def step(self, it: int) -> None:
        m, cfg = self.m, self.m.cfg
        terms: list[torch.Tensor] = []

        def hook(module, args, output):
            x = args[0]
            nch = x.shape[1]
            mean = x.mean([0, 2, 3])
            var = x.permute(1, 0, 2, 3).contiguous().view([nch, -1]).var(1, unbiased=False)
            terms.append(torch.norm(module.running_var - var, 2) + torch.norm(module.running_mean - mean, 2))

        handles = [mod.register_forward_hook(hook) for mod in bn_layers(m.net)]
        config = DSAConfig(strategy="rrc+flip", share="batch", rrc_scale=(m.min_scale(it), 1.0))
        for g, p, y, opt in zip(m.batch_ids, self.params, self.classes, self.opts):
            terms.clear()
            x = apply_dsa(p, sample_dsa(config, 1, tuple(p.shape[1:]), generator(cfg.seed, it, g, STREAM_AUG)))
            d = torch.randint(-cfg.jitter, cfg.jitter + 1, (2,), generator=generator(cfg.seed, it, g, STREAM_JITTER))
            x = torch.roll(x, shifts=(int(d[0]), int(d[1])), dims=(2, 3))
            loss = F.cross_entropy(m.net(x), y) + cfg.r_bn * (cfg.first_bn_multiplier * terms[0] + sum(terms[1:]))
            opt.zero_grad()
            loss.backward()
            opt.step()
        for h in handles:
            h.remove()


def ours_step(method: SRe2L, it: int) -> None:
    method.images.grad = None
    method.compute_grads(it)
    method.opts["images"].step()


def timed(fn, iters: int, device: torch.device) -> tuple[float, PeakMemory]:
    fn(0)  # warm-up (allocator, oneDNN/cuDNN plans)
    if device.type == "cuda":
        torch.cuda.synchronize()
    with PeakMemory() as peak:
        t0 = time.perf_counter()
        for it in range(1, iters + 1):
            fn(it)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return iters / seconds, peak


def main() -> None:
    tune_cpu_allocator()  # what the condense command and its workers run with (docs/BENCHMARKS.md)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="convnet:norm=batch,width=64")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=100, help="classes per batch (SRe2L's 100)")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast of the teacher (CUDA)")
    p.add_argument("--threads", type=int)
    p.add_argument("--chunk", type=int, help="images per teacher forward (default: sre2l's, 128 on a CPU)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        teacher = make_teacher(args.arch, args.channels, args.classes, args.size, Path(tmp))
        cfg = SRe2LConfig(teacher=teacher, ipc=args.ipc, batch_size=args.batch_size, iters=args.iters + 1,
                          amp=args.amp, chunk=args.chunk, out=str(Path(tmp) / "x.h5"))
        naive = Naive(SRe2L(cfg, device))
        naive_rate, naive_peak = timed(naive.step, args.iters, device)
        ours = SRe2L(cfg, device)
        ours_rate, ours_peak = timed(lambda it: ours_step(ours, it), args.iters, device)
    n = args.classes * args.ipc
    print(f"sre2l recover, {args.arch}, {n} images {args.channels}x{args.size}x{args.size} in "
          f"{len(ours.sizes)} batches, {device}, {torch.get_num_threads()} threads, {args.iters} iterations")
    for name, rate, peak in (("naive (per batch, per-layer hooks)", naive_rate, naive_peak),
                             ("condense (chunked forwards, fused stats)", ours_rate, ours_peak)):
        cuda = "" if peak.cuda_mib is None else f", peak CUDA {peak.cuda_mib:.0f} MiB"
        print(f"  {name:42s} {rate:8.2f} it/s   peak RSS {peak.rss_mib:.0f} MiB{cuda}")
    print(f"  speed-up {ours_rate / naive_rate:.2f}x")


if __name__ == "__main__":
    main()

"""Video distillation: clips [N, T, C, H, W], frame-folder readers, video networks, clip-consistent DSA,
the static/dynamic memory (s2d) with its DM and TM objectives checked against naive versions, its
file form, resume, and evaluation through the harness."""
from __future__ import annotations

import csv
import json
import math

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from condense.augment import DSAConfig, dsa
from condense.data import load_dataset
from condense.data.video import clip_frames, moving_clips, read_kinetics, read_split_csv, read_ssv2
from condense.methods.dm import DMConfig, run_dm
from condense.methods.s2d import S2DConfig, StaticDynamic, run_s2d
from condense.nets import FlatLayout, build_net, functional_call
from condense.runtime.errors import ArchError, ConfigError, DataError, FormatError
from condense.runtime.rng import generator
from condense.synset import load_synset
from condense.video_memory import VideoMemory, compose
from conftest import Killed, kill_after

CPU = torch.device("cpu")
QUIET = {"progress": lambda m: None, "bars": False}
NET3D = "convnet3d:width=8,stride=1,dropout=0"


# ------------------------------------------------------------------------------------- data

def write_frames(folder, count: int, size: int = 8) -> None:
    """``count`` frames whose grey level encodes their number (frame k: 3 k), named as UCF's."""
    from PIL import Image

    folder.mkdir(parents=True)
    for k in range(count):
        Image.fromarray(np.full((size, size, 3), 3 * k, np.uint8)).save(folder / f"frame{k + 1:06d}.jpg", quality=100)


def frame_numbers(clip: torch.Tensor) -> list[int]:
    """The frame numbers encoded by :func:`write_frames` in a clip [T, 3, H, W] of [0, 1] pixels."""
    return [round(float(f.mean()) * 255 / 3) for f in clip]


def test_clip_sampling_is_the_papers_stride_rule():
    assert clip_frames(64, 16, 4, None) == list(range(0, 64, 4))
    assert clip_frames(40, 16, 4, None) == list(range(0, 32, 2))  # too short for stride 4: skip = 40 // 16
    g = torch.Generator().manual_seed(0)
    starts = {clip_frames(100, 16, 4, g)[0] for _ in range(200)}
    assert starts == set(range(100 - 15 * 4))  # every start that fits, none that does not
    with pytest.raises(DataError, match="cannot give 16"):
        clip_frames(10, 16, 4, None)


def test_ucf_style_folders_are_read_lazily_in_frame_order(tmp_path):
    rows = [("v_a_1", 0, "train", 70), ("v_b_1", 1, "train", 40), ("v_a_2", 0, "test", 20), ("v_b_2", 1, "test", 64)]
    with open(tmp_path / "splits.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["folder_name", "label", "split"])
        for name, label, split, n in rows:
            w.writerow([name, label, split])
            write_frames(tmp_path / "jpegs_112" / name, n)
    x, y, xt, yt = read_split_csv(tmp_path, "splits.csv", "jpegs_112", "ucf", frames=8, stride=4, size=8)
    assert x.shape == (2, 8, 3, 8, 8) and xt.shape == (2, 8, 3, 8, 8) and y.tolist() == [0, 1]
    clips = x[[0, 1]]
    for clip, n in zip(clips, (70, 40)):
        numbers = frame_numbers(clip)
        assert np.diff(numbers).tolist() == [4] * 7 and 0 <= numbers[0] <= n - 29  # stride 4, in order
    assert np.diff(frame_numbers(xt[[0]][0])).tolist() == [2] * 7  # 20 frames: too short for stride 4
    assert torch.equal(x[[1]][0], clips[1])  # the same clip on every read
    assert torch.equal(x.subset([1])[[0]], clips[1:])
    # a lazy video split trains batch by batch (experts, evaluation) without being held in memory
    from condense.train import TrainProtocol, evaluate

    acc = evaluate(x, torch.as_tensor(y), "convnet3d:width=4,stride=1,dropout=0", TrainProtocol(epochs=1, dsa=False),
                   0, test=(xt, torch.as_tensor(yt)), num_classes=2)
    assert 0.0 <= acc <= 1.0
    with open(tmp_path / "bad.csv", "w") as f:
        f.write("video,label\nv_a_1,0\n")
    with pytest.raises(DataError, match="folder_name, label, split"):
        read_split_csv(tmp_path, "bad.csv", "jpegs_112", "ucf", frames=8, stride=4, size=8)


def test_the_registry_reads_miniucf101_from_its_layout(tmp_path):
    with open(tmp_path / "ucf50_splits1.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["folder_name", "label", "split"])
        for c in range(50):
            for split in ("train",) * 6 + ("test",):
                name = f"v{c}_{split}_{f.tell()}"
                w.writerow([name, c, split])
                (tmp_path / "jpegs_112" / name).mkdir(parents=True)
    ds = load_dataset("miniucf101", tmp_path)  # nothing decoded yet
    assert ds.x_train.shape == (50 * 6 - 250, 16, 3, 112, 112) and ds.x_val.shape[0] == 250
    assert ds.x_test.shape[0] == 50 and ds.meta["image_shape"] == [16, 3, 112, 112]


def test_kinetics_and_ssv2_layouts(tmp_path):
    k4 = tmp_path / "k400"
    k4.mkdir()
    for csv_name, split in (("train.csv", "train"), ("validate.csv", "val")):
        with open(k4 / csv_name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            for i, (label, n) in enumerate((("abseiling", 8), ("zumba", 8), ("zumba", 5))):
                w.writerow([label, f"id{i}", 10, 20, split])
                write_frames(k4 / split / f"id{i}_000010_000020", n)
    x, y, xt, yt, names = read_kinetics(k4, frames=8, size=8)
    assert names == ("abseiling", "zumba") and y.tolist() == [0, 1] and x.shape == (2, 8, 3, 8, 8)  # 5 frames: skipped
    assert frame_numbers(x[[1]][0]) == list(range(8))
    ss = tmp_path / "ssv2"
    ss.mkdir()
    (ss / "class_list.json").write_text(json.dumps(["pushing", "pulling"]))
    for file, ids in (("annot_train.json", (1, 2)), ("annot_val.json", (3,))):
        (ss / file).write_text(json.dumps([{"id": i, "class": i % 2} for i in ids]))
        for i in ids:
            write_frames(ss / "frame" / str(i), 8)
    x, y, xt, yt, names = read_ssv2(ss, frames=8, size=8)
    assert y.tolist() == [1, 0] and yt.tolist() == [1] and frame_numbers(xt[[0]][0]) == list(range(8))
    (ss / "annot_val.json").write_text("{}")
    with pytest.raises(DataError, match="annot_val.json"):
        read_ssv2(ss)


def test_moving_clips_move_by_their_direction_and_wrap_around():
    items = torch.rand(4, 1, 28, 28)
    clips = moving_clips(items, torch.tensor([1, -1, 1, -1]), torch.Generator().manual_seed(0))
    assert clips.shape == (4, 8, 3, 16, 16)
    for clip, d in zip(clips, (1, -1, 1, -1)):
        for t in range(7):
            assert torch.equal(clip[t + 1], torch.roll(clip[t], 2 * d, dims=2))
    ds = load_dataset("moving-toy")
    frames = load_dataset("moving-toy-frames")
    assert ds.x_train.shape == (88, 8, 3, 12, 12) and frames.x_train.shape == (88, 3, 12, 12)
    assert torch.equal(ds.y_val, frames.y_val)  # the same videos held out


# ------------------------------------------------------------------------------------- networks, DSA

def test_convnet3d_is_the_reference_network():
    net = build_net("convnet3d", 3, 50, (112, 112), generator=generator(0))
    assert sum(p.numel() for p in net.parameters()) == 3_647_666  # the reference's count for miniUCF101
    assert net.embed(torch.randn(1, 16, 3, 112, 112)).shape == (1, 2048)
    small = build_net("convnet3d:width=128", 3, 400, (64, 64), generator=generator(0))
    assert small.embed(torch.randn(2, 8, 3, 64, 64)).shape == (2, 256) and small(torch.randn(2, 8, 3, 64, 64)).shape == (2, 400)
    with pytest.raises(ArchError, match="stride=1"):
        build_net("convnet3d", 3, 10, (16, 16))
    with pytest.raises(ArchError, match="clips"):
        build_net(NET3D, 3, 10, (16, 16))(torch.randn(2, 3, 16, 16))


def test_the_frame_network_sees_no_motion():
    net = build_net("convnet-frames:width=8,depth=2", 3, 4, (12, 12), generator=generator(0))
    clip = torch.randn(2, 8, 3, 12, 12)
    torch.testing.assert_close(net(clip), net(clip.flip(1)))  # frame order does not matter
    torch.testing.assert_close(net.embed(clip), torch.stack([net.frame.embed(c).mean(0) for c in clip]))


@pytest.mark.parametrize("share", ["image", "batch", "view"])
def test_dsa_moves_every_frame_of_a_clip_alike(share):
    still = torch.randn(3, 1, 3, 12, 12).expand(3, 6, 3, 12, 12).contiguous()
    out = dsa(still, DSAConfig(share=share), generator(1))
    assert torch.equal(out, out[:, :1].expand_as(out))  # a still clip stays still
    moving = torch.randn(3, 6, 3, 12, 12)
    flat = torch.stack([dsa(moving[:, t], DSAConfig(share=share, strategy="flip_crop_rotate"), generator(2))
                        for t in range(6)], 1)
    torch.testing.assert_close(dsa(moving, DSAConfig(share=share, strategy="flip_crop_rotate"), generator(2)), flat)


# ------------------------------------------------------------------------------------- the memory

def naive_clip(static, dynamic, weight, bias):
    """One clip [T, C, H, W] from a still [C, H, W] and a dynamic memory [T, 1, H, W], one frame at a time:
    output frame t sums the kernel over input frames t-1, t, t+1 (zero outside)."""
    t = dynamic.shape[0]
    inputs = [torch.cat([static, dynamic[k]]) for k in range(t)]
    frames = []
    for k in range(t):
        out = bias.view(-1, 1, 1).expand(-1, *static.shape[1:])
        for dt in (-1, 0, 1):
            if 0 <= k + dt < t:
                out = out + F.conv2d(inputs[k + dt][None], weight[:, :, dt + 1], padding=1)[0]
        frames.append(out)
    return torch.stack(frames)


def test_compose_is_the_integrator_on_every_pairing_with_its_gradient():
    g = torch.Generator().manual_seed(0)
    statics, dynamics = torch.randn(2, 4, 3, 5, 5, generator=g), torch.randn(2, 4, 6, 1, 5, 5, generator=g)
    weight, bias = torch.randn(3, 4, 3, 3, 3, generator=g), torch.randn(3, generator=g)
    for t in (statics, dynamics, weight, bias):
        t.requires_grad_(True)
    ours = compose(statics, dynamics, weight, bias, 2, 6)
    naive = torch.stack([naive_clip(statics[c, 2 * j + a], dynamics[c, 2 * j + b], weight, bias)
                         for c in range(2) for j in range(2) for a in range(2) for b in range(2)])
    torch.testing.assert_close(ours, naive, rtol=1e-4, atol=1e-5)
    w = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad((ours * w).sum(), [statics, dynamics, weight, bias]),
                    torch.autograd.grad((naive * w).sum(), [statics, dynamics, weight, bias])):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert torch.equal(compose(statics, None, None, None, 1, 6)[5], statics[1, 1].expand(6, 3, 5, 5))


@pytest.fixture(scope="module")
def static(tmp_path_factory) -> str:
    """A static memory of moving-toy: 4 stills per class by DM on moving-toy-frames."""
    out = tmp_path_factory.mktemp("static") / "static.h5"
    run_dm(DMConfig(dataset="moving-toy-frames", arch="convnet:width=8,depth=2", ipc=4, iters=3, batch_real=8,
                    out=str(out)), CPU, **QUIET)
    return str(out)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    from trajectories.record import BufferConfig, record_store

    out = tmp_path_factory.mktemp("store") / "experts"
    record_store(BufferConfig(dataset="moving-toy", arch=NET3D, experts=1, epochs=3, out=str(out)),
                 progress=lambda m: None, bars=False)
    return str(out)


def s2d_cfg(static, folder, **over) -> S2DConfig:
    kw = dict(static=static, dataset="moving-toy", arch=NET3D, ipc=2, iters=4, checkpoint_every=2, batch_real=6,
              lr_dynamic=0.1, lr_integrator=0.01, out=str(folder / "s2d.h5"))
    return S2DConfig(**{**kw, **over})


def test_video_dm_loss_and_gradient_are_the_naive_ones(static, tmp_path):
    method = StaticDynamic(s2d_cfg(static, tmp_path, dsa=False), load_dataset("moving-toy"), CPU)
    loss = method.compute_grads(0)["loss"]
    grads = [method.dynamics.grad.clone(), method.weight.grad.clone()]
    net = method.network(0)
    dyn, weight = method.dynamics.detach().requires_grad_(True), method.weight.detach().requires_grad_(True)
    naive = 0.0
    for c in range(4):  # class by class, clip by clip
        real = torch.stack([net.embed(method.x_train[i][None])[0] for i in method.real_indices(0, c)]).mean(0)
        clips = [naive_clip(method.statics[c, 2 * j + a], dyn[c, 2 * j + b], weight, method.bias)
                 for j in range(2) for a in range(2) for b in range(2)]
        syn = torch.stack([net.embed(clip[None])[0] for clip in clips]).mean(0)
        naive = naive + ((real.detach() - syn) ** 2).sum()
    assert math.isclose(loss, float(naive.detach()), rel_tol=1e-4)
    for a, b in zip(grads, torch.autograd.grad(naive, [dyn, weight])):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)


def test_video_tm_loss_and_gradient_are_the_naive_ones(static, store, tmp_path):
    from trajectories import open_store

    st = open_store(store)
    cfg = s2d_cfg(static, tmp_path, finetune="tm", trajectories=store, max_start_epoch=2, syn_steps=3, batch_syn=5,
                  dsa=False)
    method = StaticDynamic(cfg, load_dataset("moving-toy"), CPU, st)
    out = method.compute_grads(0)
    grads = [method.dynamics.grad.clone(), method.log_lr.grad.clone()]
    dyn, log_lr = method.dynamics.detach().requires_grad_(True), method.log_lr.detach().requires_grad_(True)
    clips = torch.stack([naive_clip(method.statics[c, 2 * j + a], dyn[c, 2 * j + b], method.weight, method.bias)
                         for c in range(4) for j in range(2) for a in range(2) for b in range(2)])
    labels = torch.arange(4).repeat_interleave(8)
    from condense.methods.tm import student_batches

    start = st.epoch(out["expert"], out["start_epoch"])
    target = st.epoch(out["expert"], out["start_epoch"] + 1)
    theta = start.clone().requires_grad_(True)
    for idx in student_batches(cfg.seed, 0, 3, 32, 5):  # plain SGD steps, one by one
        loss = F.cross_entropy(functional_call(method.net, theta, clips[idx]), labels[idx])
        theta = theta - log_lr.exp() * torch.autograd.grad(loss, theta, create_graph=True)[0]
    naive = ((theta - target) ** 2).sum() / ((start - target) ** 2).sum()
    assert math.isclose(out["loss"], float(naive.detach()), rel_tol=1e-4)
    for a, b in zip(grads, torch.autograd.grad(naive, [dyn, log_lr])):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-7)
    assert FlatLayout.of(method.net).numel == st.layout.numel


def test_a_killed_s2d_run_resumes_to_the_same_set_stored_as_its_memory(static, tmp_path):
    whole = run_s2d(s2d_cfg(static, tmp_path / "a"), CPU, **QUIET)
    with pytest.raises(Killed):
        run_s2d(s2d_cfg(static, tmp_path / "b", eval_every=1), CPU, **QUIET, evaluate=kill_after(3))
    resumed = run_s2d(s2d_cfg(static, tmp_path / "b"), CPU, **QUIET)
    assert torch.equal(whole.memory.dynamics, resumed.memory.dynamics)
    saved = load_synset(tmp_path / "b" / "s2d.h5")
    assert torch.equal(saved.images, resumed.images) and saved.images.shape == (32, 8, 3, 12, 12)
    from condense.methods.s2d import STREAM_DYNAMIC

    assert not torch.allclose(saved.memory.dynamics, torch.randn(4, 4, 8, 1, 12, 12, generator=generator(0, 0, STREAM_DYNAMIC)))
    stills = load_synset(static).images.view(4, 4, 3, 12, 12)
    assert torch.equal(saved.memory.statics, stills)  # frozen, as the reference
    numbers = 4 * (4 * 3 * 144 + 4 * 8 * 144) + 3 * 4 * 27 + 3
    assert saved.storage_bytes()["images"] == 4 * numbers and saved.budget_ipc == 2  # 0.92 of 2 real clips
    with h5py.File(tmp_path / "b" / "s2d.h5") as f:
        assert f.attrs["version"] == 3 and "images" not in f and f["memory/dynamics"].shape == (4, 4, 8, 1, 12, 12)


def test_the_static_only_set_repeats_each_still(static, tmp_path):
    s = run_s2d(s2d_cfg(static, tmp_path, finetune="none"), CPU, **QUIET)
    assert s.method == "static" and s.images.shape == (16, 8, 3, 12, 12)
    assert torch.equal(s.images[5], s.images[5, :1].expand(8, 3, 12, 12))
    assert s.storage_bytes()["images"] == 16 * 3 * 144 * 4 and load_synset(tmp_path / "s2d.h5").ipc == 4


def test_bad_inputs_are_one_line_each(static, tmp_path):
    with pytest.raises(ConfigError, match="--static"):
        run_s2d(s2d_cfg("", tmp_path), CPU, **QUIET)
    with pytest.raises(ConfigError, match="needs 6"):
        run_s2d(s2d_cfg(static, tmp_path, ipc=3), CPU, **QUIET)
    with pytest.raises(ConfigError, match="--trajectories"):
        run_s2d(s2d_cfg(static, tmp_path, finetune="tm"), CPU, **QUIET)
    other = tmp_path / "toy.h5"
    run_dm(DMConfig(dataset="toy", arch="convnet:width=8,depth=2", ipc=4, iters=1, batch_real=4, out=str(other)),
           CPU, **QUIET)
    with pytest.raises(ConfigError, match="moving-toy-frames"):
        run_s2d(s2d_cfg(str(other), tmp_path), CPU, **QUIET)


def test_a_hostile_memory_is_refused(static, tmp_path):
    s = run_s2d(s2d_cfg(static, tmp_path, iters=1), CPU, **QUIET)
    path = tmp_path / "s2d.h5"
    with h5py.File(path, "r+") as f:
        del f["memory/dynamics"]
        f["memory"].create_dataset("dynamics", data=np.zeros((4, 4, 7, 1, 12, 12), np.float32))
    with pytest.raises(FormatError, match="dynamics"):
        load_synset(path)
    s.save(path)
    with h5py.File(path, "r+") as f:
        f["memory"].attrs["frames"] = 6
    with pytest.raises(FormatError, match="frames"):
        load_synset(path)
    assert VideoMemory(s.memory.statics, s.memory.dynamics, None, None, 2, 8).check() is not None


def test_video_sets_are_evaluated_through_the_harness(static, tmp_path):
    from condense.cli.main import main

    s = run_s2d(s2d_cfg(static, tmp_path, iters=1), CPU, **QUIET)
    out = tmp_path / "r.json"
    assert main(["eval", str(tmp_path / "s2d.h5"), "--arch", NET3D, "--epochs", "2", "--runs", "1",
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert {r["method"] for r in rows} == {"s2d", "random"} and rows[0]["storage_bytes"]["images"] == \
        s.storage_bytes()["images"]
    assert main(["eval", str(tmp_path / "s2d.h5"), "--arch", "convnet:width=8", "--epochs", "1", "--runs", "1"]) != 0


def test_a_pipeline_names_an_s2d_steps_static_memory(tmp_path):
    from condense.workflows.pipeline import RunConfig, run_pipeline

    preset = tmp_path / "video.yaml"
    preset.write_text(f"""
description: tiny video pipeline
source: tests
run: {{steps: [synth-stills, synth-s2d, eval], out: {tmp_path / 'run'}}}
synth-stills: {{method: dm, dataset: moving-toy-frames, arch: "convnet:width=8,depth=2", ipc: 2, iters: 2, batch_real: 4}}
synth-s2d: {{method: s2d, static: synth-stills, dataset: moving-toy, arch: "{NET3D}", ipc: 1, iters: 2, batch_real: 4}}
eval: {{sets: [synth-s2d], archs: ["{NET3D}"], runs: 1, epochs: 1, dsa: false}}
""")
    doc = run_pipeline(str(preset), RunConfig(steps=["synth-stills", "synth-s2d", "eval"], out=str(tmp_path / "run")),
                       note=lambda m: None, bars=False)
    s = load_synset(tmp_path / "run" / "s2d_ipc1.h5")
    assert s.memory is not None and s.provenance["static"] == str(tmp_path / "run" / "dm_ipc2.h5")
    assert {r["method"] for r in doc["results"]} == {"s2d", "random"}

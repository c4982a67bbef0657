"""Small inputs never cause huge work or memory: every count a file declares is checked
against what the file stores (and a fixed bound) before anything is allocated or looped."""
from __future__ import annotations

import gzip
import io
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch

from condense.codec_projector import backbone, init_adapters, to_arrays
from condense.codecs import LabelContext, decode_labels, encode_labels
from condense.runtime.errors import DataError, FormatError
from condense.synset import LabelSpec, load_synset



def _hostile_helpers():
    # tests/ and tests/hostile/ each have a conftest.py and "conftest" names whichever pytest
    # imported last, so the corpus's helpers are loaded from their file
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("hostile_conftest", Path(__file__).with_name("conftest.py"))
    module = sys.modules["hostile_conftest"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_h = _hostile_helpers()
REPO, cli_proc, refused = _h.REPO, _h.cli_proc, _h.refused

V, N, K = 3, 8, 4
STRATEGY = "color_crop_cutout_flip_scale_rotate"
SPEC = LabelSpec(kind="logits", loss="kl", temperature=1.0, view_mode="per-view", view_seed=3,
                 codec="none", view_strategy=STRATEGY)


def _ctx(images=None, classes=K, spec=SPEC):
    return LabelContext(images=images, spec=spec, num_classes=classes)


def _soft():
    return torch.randn(V, N, K, generator=torch.Generator().manual_seed(0))


def _images():
    return torch.rand(N, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _projector_arrays(images, rank=1, width=4, depth=1):
    net = backbone(tuple(images.shape[1:]), K, {"depth": depth, "width": width, "seed": 0})
    return to_arrays(init_adapters(net, rank, torch.Generator().manual_seed(0)), 16)


PROJ = "projector:rank=1,width=4,depth=1"


# ----------------------------------------------------------------------------- label codecs

def test_a_million_projector_views_are_refused_before_any_is_regenerated():
    images = _images()
    arrays = _projector_arrays(images)
    with pytest.raises(FormatError, match=r"1,000,000 views x 8 images = 8,000,000 .*bound of 4,194,304"):
        decode_labels(PROJ, arrays, (10 ** 6, N, K), _ctx(images))


def test_projector_shape_must_follow_from_images_and_head():
    images = _images()
    arrays = _projector_arrays(images)
    with pytest.raises(FormatError, match="give"):
        decode_labels(PROJ, arrays, (V, N + 1, K), _ctx(images))
    static = replace(SPEC, view_mode="static", view_seed=None, view_strategy=None)
    with pytest.raises(FormatError, match="give"):
        decode_labels(PROJ, arrays, (V, N, K), _ctx(images, spec=static))


def test_projector_width_declared_apart_from_its_adapters_is_refused_before_the_backbone_is_built():
    images = _images()
    arrays = _projector_arrays(images)
    # width=10**6 would build a 10^12-weight backbone before the arrays were compared to it.
    with pytest.raises(FormatError, match="adapter"):
        decode_labels("projector:rank=1,width=1000000,depth=1", arrays, (V, N, K), _ctx(images))
    with pytest.raises(FormatError, match="adapter pairs"):
        decode_labels("projector:rank=1,width=4,depth=100000", arrays, (V, N, K), _ctx(images))


def test_projector_classes_declared_apart_from_its_head_are_refused():
    images = _images()
    arrays = _projector_arrays(images)
    with pytest.raises(FormatError, match="4 classes, the set declares 1,000,000,000"):
        decode_labels(PROJ, arrays, (V, N, K), _ctx(images, classes=10 ** 9))


def test_projector_backbone_too_big_for_the_bound_is_refused():
    images = _images()
    width, rank = 4096, 1  # consistent adapters, but a 4096-wide backbone has ~1.5e8 weights
    z = np.zeros
    arrays = {"features.0.weight.left": z((width, rank), np.float16), "features.0.weight.right": z((rank, 9), np.float16),
              "features.4.weight.left": z((width, rank), np.float16),
              "features.4.weight.right": z((rank, width * 9), np.float16),
              "classifier.weight.left": z((K, rank), np.float16),
              "classifier.weight.right": z((rank, width * 4), np.float16), "classifier.bias": z((K,), np.float16)}
    with pytest.raises(FormatError, match=r"backbone declares [\d,]+ weights, above the bound of 67,108,864"):
        decode_labels(f"projector:rank=1,width={width},depth=2", arrays, (V, N, K), _ctx(images))


def test_topk_huge_class_count_is_refused_from_the_index_dtype():
    arrays = encode_labels("topk:k=2", _soft(), _ctx())  # uint8 indices: at most 256 classes
    with pytest.raises(FormatError, match="1,000,000,000 classes.*allow 2 to 256"):
        decode_labels("topk:k=2", arrays, (V, N, 10 ** 9), _ctx())


def test_topk_decoded_size_above_the_budget_is_refused():
    rows = 40_000  # 80 KB of uint16 indices declaring 65,536 classes: 2.6e9 decoded values
    arrays = {"indices": np.zeros((rows, 1), np.uint16), "values": np.zeros((rows, 1), np.uint8)}
    with pytest.raises(FormatError, match=r"2,621,440,000 values, above the bound of"):
        decode_labels("topk:k=1", arrays, (rows, 65536), _ctx(classes=65536))


def test_topk_values_that_do_not_fit_are_refused():
    arrays = encode_labels("topk:k=2", _soft(), _ctx())
    arrays["values"] = arrays["values"][:1]
    with pytest.raises(FormatError, match="topk values"):
        decode_labels("topk:k=2", arrays, (V, N, K), _ctx())


def test_lowrank_decoded_size_above_the_budget_is_refused():
    side = 50_000  # 200 KB of factors standing for a 2.5e9-entry matrix
    arrays = {"mean": np.zeros(side, np.float16), "left": np.zeros((side, 1), np.float16),
              "right": np.zeros((1, side), np.float16)}
    with pytest.raises(FormatError, match=r"2,500,000,000 values, above the bound of"):
        decode_labels("lowrank:rank=1", arrays, (side, side), _ctx(classes=side))


def test_lowrank_rank_above_the_matrix_is_refused():
    arrays = {"mean": np.zeros(K, np.float32), "left": np.zeros((2, 3), np.float32), "right": np.zeros((3, K), np.float32)}
    with pytest.raises(FormatError, match="rank 3 exceeds min"):
        decode_labels("lowrank:rank=3", arrays, (2, K), _ctx())


@pytest.mark.parametrize("shape, needle", [((V, -N, K), "dimension of -8"), ((0, N, K), "dimension of 0"),
                                           ((V, N, 2.5), "not a size"), ((1,) * 9, "9 dimensions")])
def test_degenerate_declared_shapes_are_refused(shape, needle):
    arrays = encode_labels("lowrank:rank=1", _soft(), _ctx())
    with pytest.raises(FormatError, match=needle):
        decode_labels("lowrank:rank=1", arrays, shape, _ctx())


# ----------------------------------------------------------------------------- hostile set files

@pytest.fixture(scope="module")
def soft_sets(toy_set, tmp_path_factory):
    """The toy set with per-view soft labels stored as topk and as a projector."""
    from condense.labels import compress
    from condense.labels.projector import ProjectorFit

    s = load_synset(toy_set)
    n = int(s.images.shape[0])
    soft = replace(s, labels=torch.randn(2, n, s.num_classes, generator=torch.Generator().manual_seed(0)),
                   label_spec=SPEC)
    folder = tmp_path_factory.mktemp("soft")
    out = {}
    for name, codec in (("topk", "topk:k=2"), ("projector", "projector:rank=1,width=4,depth=1")):
        out[name] = compress(soft, codec, ProjectorFit(steps=1)).save(folder / f"{name}.h5")
    return out


def _tamper(src, dst, shape):
    shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        f["labels"].attrs["shape"] = np.asarray(shape, dtype=np.int64)
    return dst


HOSTILE_SHAPES = {  # a declared label shape, and what its refusal must name
    "projector-views": ("projector", lambda shape: [10 ** 6, *shape[1:]], "1,000,000 views"),
    "topk-classes": ("topk", lambda shape: [*shape[:-1], 10 ** 8], "100,000,000 classes"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_SHAPES))
@pytest.mark.parametrize("command", ["show", "eval", "convert"])
def test_commands_refuse_a_hostile_label_shape_fast_in_one_line(soft_sets, tmp_path, case, command):
    codec, tamper, needle = HOSTILE_SHAPES[case]
    src = soft_sets[codec]
    with h5py.File(src, "r") as f:
        shape = [int(d) for d in f["labels"].attrs["shape"]]
    bad = _tamper(src, tmp_path / "bad.h5", tamper(shape))
    argv = {"show": ["show", bad, "--out", tmp_path / "x.png"], "eval": ["eval", bad, "--runs", "1", "--epochs", "1"],
            "convert": ["convert", bad, tmp_path / "x.pt"]}[command]
    refused(cli_proc(*argv, timeout=60), "bad.h5", needle, "bound" if codec == "projector" else "allow")
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.pt").exists()


# ----------------------------------------------------------------------------- IDX

def _idx_header(dims, type_byte=0x08):
    return bytes([0, 0, type_byte, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def _gzip_stream(head: bytes, zeros: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [c.compress(head)]
    block = bytes(1 << 20)
    for _ in range(zeros >> 20):
        out.append(c.compress(block))
    out.append(c.flush())
    return b"".join(out)


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    """~400 KB of gzip decompressing to 400 MB, under a header declaring one 28x28 image."""
    path = tmp_path_factory.mktemp("idx") / "train-images-idx3-ubyte.gz"
    path.write_bytes(_gzip_stream(_idx_header((1, 28, 28)), 400 << 20))
    assert path.stat().st_size < 1 << 20
    return path


_PEAK = """
import resource, sys
from condense.data.idx import read_idx
from condense.runtime.errors import DataError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_idx(sys.argv[1])
    print("accepted")
except DataError as e:
    print("refused:", e)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_gzip_bomb_is_refused_without_decompressing_it(bomb):
    p = subprocess.run([sys.executable, "-c", _PEAK, str(bomb)], capture_output=True, text=True, timeout=60, cwd=REPO)
    msg, grown = p.stdout.strip().splitlines()
    assert msg.startswith("refused:") and "more than the 800 bytes its header declares" in msg, p.stdout + p.stderr
    assert int(grown) < 64, f"reading a 400 KB file grew the peak memory by {grown} MB"


def test_idx_header_declaring_more_than_the_bound_is_refused(tmp_path):
    for name, data in (("raw", _idx_header((65536, 65536, 2))), ("z.gz", gzip.compress(_idx_header((65536, 65536, 2))))):
        (tmp_path / name).write_bytes(data + bytes(16))
        with pytest.raises(DataError, match=r"8,589,934,608 bytes\), above the bound of 4,294,967,296"):
            from condense.data.idx import read_idx
            read_idx(tmp_path / name)


def test_idx_gzip_declaring_more_than_deflate_can_hold_is_refused(tmp_path):
    from condense.data.idx import read_idx

    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx_header((100_000, 28, 28)) + bytes(100)))
    with pytest.raises(DataError, match="more than a .*-byte gzip file can hold"):
        read_idx(tmp_path / "a.gz")


def test_idx_gzip_with_trailing_garbage_or_a_cut_trailer_is_refused(tmp_path):
    from condense.data.idx import read_idx

    good = _idx_header((2, 3)) + bytes(6)
    (tmp_path / "trail.gz").write_bytes(gzip.compress(good) + b"garbage")
    with pytest.raises(DataError, match="data after its gzip stream"):
        read_idx(tmp_path / "trail.gz")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(good)[:-8])
    with pytest.raises(DataError, match="before the gzip trailer"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "short.gz").write_bytes(gzip.compress(good[:-1]))
    with pytest.raises(DataError, match=r"truncated: 17 bytes, but dims \(2, 3\) need 18"):
        read_idx(tmp_path / "short.gz")
    # Several gzip members are one stream (what `cat a.gz b.gz` gives): still read.
    (tmp_path / "two.gz").write_bytes(gzip.compress(good[:7]) + gzip.compress(good[7:]))
    assert read_idx(tmp_path / "two.gz").shape == (2, 3)


# ----------------------------------------------------------------------------- npy / npz

def _npy_lying(shape) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue() + bytes(16)


def test_zca_cache_whose_npy_header_lies_is_refused_before_np_load_allocates(tmp_path):
    from condense.data.zca import ZCA

    z = ZCA.fit(torch.rand(20, 1, 2, 2), 0.1, key="k")
    good = z.save(tmp_path / "good.npz")
    bad = tmp_path / "bad.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = _npy_lying((10 ** 6, 10 ** 6)) if info.filename == "whiten.npy" else src.read(info)
            dst.writestr(info.filename, data)
    with pytest.raises(DataError, match=r"declares shape \(1000000, 1000000\)"):
        ZCA.load(bad)


def test_zca_cache_with_a_compressed_member_is_refused(tmp_path):
    from condense.data.zca import ZCA

    good = ZCA.fit(torch.rand(20, 1, 2, 2), 0.1, key="k").save(tmp_path / "good.npz")
    bad = tmp_path / "bad.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(DataError, match="is compressed"):
        ZCA.load(bad)


def test_npy_header_against_file_size(tmp_path):
    from condense.data.cache import npy_header

    path = tmp_path / "x.npy"
    path.write_bytes(_npy_lying((10 ** 9, 3, 64, 64)))
    with open(path, "rb") as f, pytest.raises(DataError, match="holds 16 bytes"):
        npy_header(f, path.stat().st_size, str(path))


# ----------------------------------------------------------------------------- images

def _png_header(width, height) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [10_000, 20_000])  # PIL warns above ~89M pixels and raises above ~179M
def test_image_declaring_a_decompression_bomb_is_one_data_error(tmp_path, side):
    from condense.data.lazy import decode_resized

    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(side, side))
    with pytest.raises(DataError, match=r"pixels.*decompression bomb"):
        decode_resized(path, 224, 256)


def test_tiny_imagenet_image_larger_than_64x64_is_refused_from_its_header(tmp_path):
    from condense.data.readers import _decode

    path = tmp_path / "big.png"
    path.write_bytes(_png_header(5000, 5000))
    with pytest.raises(DataError, match="above the bound of 4,096"):
        _decode((path, 0))


# ----------------------------------------------------------------------------- MTT buffers

def test_mtt_buffer_repeating_one_expert_is_refused_before_writing(tmp_path):
    from condense.data import dataset_info
    from condense.nets import build_net
    from trajectories.mtt_import import import_mtt

    info = dataset_info("toy")
    net = build_net("convnet:width=8", info.channels, info.num_classes, info.image_size)
    expert = [[p.detach().clone() + e for p in net.parameters()] for e in range(3)]
    path = tmp_path / "replay_buffer_0.pt"
    torch.save([expert] * 2000, path)  # pickled once, referenced 2000 times: a few KB
    with pytest.raises(FormatError, match="alias shared storage"):
        import_mtt([path], tmp_path / "store", dataset="toy", arch="convnet:width=8", progress=lambda s: None)
    assert list((tmp_path / "store").glob("expert_*")) == []

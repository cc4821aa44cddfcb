"""avvsr's backbones against the reference implementations: outputs, speed and memory.

Run: ``make bench-reference`` (or ``python benchmarks/reference_parity.py`` with avvsr
importable). The first run creates ``.cache/reference-venv``: a venv that sees this
interpreter's packages (the same torch wheel, through a ``.pth`` file) plus BasicSR from PyPI
(``basicsr==1.4.2``, installed without its training dependencies, and OpenCV, which its
utilities import). The script then re-runs itself in that venv.

mmagic's own code runs for every backbone and SPyNet, in a second venv, ``.cache/mmagic-venv``
(made the same way, binary wheels only, no dependency resolution: ``mmagic==1.2.0``,
``mmcv-lite==2.1.0``, ``mmengine`` and the few packages their imports need, with ``numpy<2``
installed into the venv, where it wins over this interpreter's numpy 2 that mmcv 2.1 fails on,
``np.bool8``). :func:`import_mmagic` imports mmagic's ``basicvsr_net.py``, ``iconvsr_net.py``,
``basicvsr_plusplus_net.py``, ``edvr_net.py`` and its test loader's frame-index transform
without running ``mmagic.models``' or ``mmagic.datasets``' ``__init__.py`` (they import every
editor, diffusers and mmcv's compiled ops among them). The deformable convolutions (the PCD
alignment of EDVR and of IconVSR's EDVR-M refill module, BasicVSR++'s second-order alignment)
run mmcv's ``ModulatedDeformConv2d`` (mmcv-lite's Python); its compiled kernel, ``mmcv._ext``,
has no wheel, and ``modulated_deform_conv_forward``, the only compiled operator these networks
call, is computed by torchvision's ``deform_conv2d`` (:func:`_modulated_deform_conv_forward`),
as BasicSR computes its own DCN without its compiled extension. The BasicSR rows also save
BasicSR's network under mmagic's key names (:data:`MMAGIC_RENAMES`, read from mmagic's network
files, whose modules are BasicSR's under other names; the key fixture's mmagic entry); the
mmagic rows check those names against mmagic's own networks.

Per backbone (paper size, x4), the script:

1. builds BasicSR's network with random weights (BasicVSR++ as on a GPU: BasicSR leaves its
   alignment out when CUDA is missing), saves it as the zoo does (``{"params": ...}``; mmagic:
   ``{"state_dict": {"generator.<key>": ...}}``), converts each file with
   :func:`avvsr.models.convert.convert_state_dict` and loads it strictly;
2. prints the largest absolute output difference (float64, 7 frames of 64x64 LR, all frames;
   IconVSR also at 63x66, not divisible by 4) with the converted config (``clip_ends:
   basicsr`` where it applies) and with the default ``clip_ends: mirror``, and whether the
   mmagic file converts to the same tensors. EDVR's reference output for frame t is BasicSR's
   EDVR on the window its test loader reads (``reflection_circle``); SPyNet's row compares
   flows. Then the same for mmagic's own networks (:func:`mmagic_parity`: its network, random
   weights, saved as its zoo does, ``{"state_dict": {"generator.<key>": ...}}``; SPyNet as
   mmagic's pretrained SPyNet file, a bare state dict), run in the mmagic venv, with the
   network's parameter count and whether its key shapes are the fixture's; mmagic's EDVR runs
   on the windows of the test loader of its zoo config (``GenerateFrameIndiceswithPadding``,
   ``reflection_circle`` in mmagic 1.2.0's EDVR configs; :func:`mmagic_test_windows`).
   mmagic's IconVSR takes 63x66: it reflect-pads the frames' bottom and right to a multiple
   of 4 (its EDVR-M's pyramid halves twice; mmagic's EDVRNet alone asserts a multiple of 4)
   and crops the output back;
3. times both (float32, 2 threads, alternating in this process, 6 repeats after a warm-up;
   milliseconds per output frame, median; avvsr also with ``channels_last`` weights) and
   measures the extra memory of one forward under ``torch.no_grad`` at T = 7 and 14 (see
   :func:`forward_peak_mib`).

``--dump-keys PATH`` only writes ``{format: {network: {key: shape}}}`` of the reference
networks' files (the fixture ``tests/data/reference_keys.json`` of ``tests/test_convert.py``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import torch
from torch import Tensor, nn

from avvsr.models.acceleration import Acceleration
from avvsr.models.convert import build_backbone, convert_state_dict

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".cache" / "reference-venv"
REQUIREMENTS = ["basicsr==1.4.2", "opencv-python-headless"]
BUILD_REQUIREMENTS = ["setuptools>=70", "wheel", "cython"]
MMAGIC_VENV = ROOT / ".cache" / "mmagic-venv"
# mmagic and what importing its network files and zoo configs needs; numpy 1 (mmcv 2.1 uses
# np.bool8) installed into the venv, where it wins over this interpreter's numpy 2.
MMAGIC_REQUIREMENTS = [
    "numpy<2",
    "mmagic==1.2.0",
    "mmcv-lite==2.1.0",
    "mmengine==0.10.7",
    "opencv-python-headless",
    "addict",
    "termcolor",
    "yapf",
]
IN_VENV = "AVVSR_REFERENCE_VENV"
MMAGIC_PYTHON = "AVVSR_MMAGIC_PYTHON"
BACKBONES = ("basicvsr", "iconvsr", "basicvsrpp", "edvr", "edvr_l")
CLIP_ENDS_BACKBONES = ("iconvsr", "edvr", "edvr_l")
# mmagic's zoo configs of the EDVR sizes (under its package's .mim/configs/edvr/): their test
# loader's first transform completes each frame's window at the clip ends.
MMAGIC_EDVR_CONFIGS = {
    "edvr": "edvrm_8xb4-600k_reds.py",
    "edvr_l": "edvrl_c128b40_8xb8-lr2e-4-600k_reds4.py",
}
REFERENCE_KEYS = ROOT / "tests" / "data" / "reference_keys.json"
SECTIONS = ("parity", "speed", "memory")
PARITY_FRAMES = 7  # LR frames of each parity clip

# mmagic's names for BasicSR's modules, in order; each applies to the whole key.
MMAGIC_RENAMES = [
    (r"^(backward|forward)_trunk\.", r"\1_resblocks."),
    (r"^upconv([12])\.", r"upsample\1.upsample_conv."),
    (  # SPyNet's convs are ConvModules, numbered without the ReLUs between them
        r"^spynet\.basic_module\.(\d+)\.basic_module\.(\d+)\.",
        lambda m: f"spynet.basic_module.{m[1]}.basic_module.{int(m[2]) // 2}.conv.",
    ),
    (r"pcd_align\.", "pcd_alignment."),
    (r"conv_l([23])_([12])\.", r"feat_l\1_conv\2.conv."),
    (
        r"(pcd_alignment\.(?:offset_conv[123]\.l\d|feat_conv\.l\d|cas_offset_conv[12]))\.",
        r"\1.conv.",
    ),
    (
        r"(fusion\.(?:feat_fusion|spatial_attn[1234]|spatial_attn_l[123]|spatial_attn_add1))\.",
        r"\1.conv.",
    ),
]


# ----------------------------------------------------------------------------------------
# the reference venv


def ensure_venv() -> Path:
    """Create ``.cache/reference-venv`` once; return its python."""
    python, ready = _new_venv(VENV, REQUIREMENTS + BUILD_REQUIREMENTS)
    if ready:
        return python
    pip = [str(python), "-m", "pip", "install", "--quiet", "--no-deps"]
    # BasicSR's sdist lists torch among its build requirements: build it against the torch
    # this venv already sees instead of letting pip fetch another one.
    subprocess.run([*pip, *BUILD_REQUIREMENTS], check=True)
    subprocess.run([*pip, "--no-build-isolation", *REQUIREMENTS], check=True)
    (VENV / ".installed").write_text(repr(REQUIREMENTS + BUILD_REQUIREMENTS))
    return python


def ensure_mmagic_venv() -> Path:
    """Create ``.cache/mmagic-venv`` once (binary wheels only, no dependency resolution:
    mmagic's own list pulls diffusers, transformers and mmcv's compiled build); return its
    python."""
    python, ready = _new_venv(MMAGIC_VENV, MMAGIC_REQUIREMENTS)
    if ready:
        return python
    pip = [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--only-binary", ":all:"]
    subprocess.run([*pip, *MMAGIC_REQUIREMENTS], check=True)
    (MMAGIC_VENV / ".installed").write_text(repr(MMAGIC_REQUIREMENTS))
    return python


def _new_venv(venv: Path, requirements: list[str]) -> tuple[Path, bool]:
    """``venv``'s python and whether it is installed with ``requirements`` already; if not,
    (re)create it empty, seeing this interpreter's packages (torch, avvsr's dependencies)
    after its own."""
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if stamp.is_file() and stamp.read_text() == repr(requirements):
        return python, True
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # This interpreter's packages (torch, numpy, avvsr's dependencies), after the venv's own.
    Path(site, "avvsr-project.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python, False


def import_basicsr() -> types.SimpleNamespace:
    """BasicSR's network classes, without running ``basicsr/__init__.py`` (it imports the
    whole training stack, whose data module needs a torchvision function removed in 0.17)."""
    import importlib.util

    spec = importlib.util.find_spec("basicsr")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("basicsr is not installed in this interpreter")
    _bare_packages(
        list(spec.submodule_search_locations)[0], ("basicsr", "basicsr.archs", "basicsr.data")
    )
    from basicsr.archs import basicvsr_arch, basicvsrpp_arch, edvr_arch, spynet_arch
    from basicsr.data.data_util import generate_frame_indices

    return types.SimpleNamespace(
        BasicVSR=basicvsr_arch.BasicVSR,
        IconVSR=basicvsr_arch.IconVSR,
        BasicVSRPlusPlus=basicvsrpp_arch.BasicVSRPlusPlus,
        EDVR=edvr_arch.EDVR,
        SpyNet=spynet_arch.SpyNet,
        generate_frame_indices=generate_frame_indices,
    )


def _bare_packages(package_dir: str, names: tuple[str, ...]) -> None:
    """Register ``names`` (packages under ``package_dir``) as empty packages, so importing a
    module below them does not run their ``__init__.py``."""
    top = names[0].split(".")[0]
    for name in names:
        module = types.ModuleType(name)
        module.__path__ = [package_dir + name.removeprefix(top).replace(".", "/")]
        sys.modules[name] = module


def import_mmagic() -> types.SimpleNamespace:
    """mmagic's ``BasicVSRNet``, ``IconVSRNet``, ``BasicVSRPlusPlusNet``, ``EDVRNet`` and
    ``SPyNet``, and its test loader's ``GenerateFrameIndiceswithPadding``, from its own files,
    unchanged; ``package``: mmagic's folder (its zoo configs are under ``.mim/configs``).

    ``mmagic.models``' and ``mmagic.datasets``' ``__init__.py`` import every editor and
    dataset (diffusers, mmcv's compiled ops): like :func:`import_basicsr`, the packages on the
    way are registered empty, and the two names the network files take from
    ``mmagic.models.archs`` are set from their modules there. The deformable convolutions
    (IconVSR's and EDVR's PCD alignment, BasicVSR++'s second-order alignment) run mmcv's
    ``ModulatedDeformConv2d`` / ``modulated_deform_conv2d`` (mmcv-lite's Python, unchanged),
    whose compiled forward kernel (``mmcv._ext``) has no wheel: it is computed by
    :func:`_modulated_deform_conv_forward` (torchvision's deformable conv), the only compiled
    operator these networks call.
    """
    import importlib.util

    import mmagic  # noqa: F401  (its __init__ only checks mmcv's and mmengine's versions)
    import mmcv

    spec = importlib.util.find_spec("mmagic")
    assert spec is not None and spec.submodule_search_locations
    package = list(spec.submodule_search_locations)[0]
    editors = ("basicvsr", "iconvsr", "edvr", "basicvsr_plusplus_net")
    _bare_packages(
        package,
        ("mmagic.models", "mmagic.models.archs", "mmagic.models.editors")
        + tuple(f"mmagic.models.editors.{e}" for e in editors)
        + ("mmagic.datasets", "mmagic.datasets.transforms"),
    )
    from mmagic.models.archs import sr_backbone, upsample

    archs = sys.modules["mmagic.models.archs"]
    archs.ResidualBlockNoBN = sr_backbone.ResidualBlockNoBN
    archs.PixelShufflePack = upsample.PixelShufflePack

    ext = types.ModuleType("mmcv._ext")
    ext.modulated_deform_conv_forward = _modulated_deform_conv_forward
    ext.modulated_deform_conv_backward = _no_backward  # checked for by mmcv's loader
    sys.modules["mmcv._ext"] = ext
    _bare_packages(list(mmcv.__path__)[0], ("mmcv.ops",))
    from mmcv.ops import modulated_deform_conv

    ops = sys.modules["mmcv.ops"]
    ops.ModulatedDeformConv2d = modulated_deform_conv.ModulatedDeformConv2d
    ops.modulated_deform_conv2d = modulated_deform_conv.modulated_deform_conv2d
    from mmagic.datasets.transforms.generate_frame_indices import GenerateFrameIndiceswithPadding
    from mmagic.models.editors.basicvsr.basicvsr_net import BasicVSRNet, SPyNet
    from mmagic.models.editors.basicvsr_plusplus_net.basicvsr_plusplus_net import (
        BasicVSRPlusPlusNet,
    )
    from mmagic.models.editors.edvr.edvr_net import EDVRNet
    from mmagic.models.editors.iconvsr.iconvsr_net import IconVSRNet

    return types.SimpleNamespace(
        package=Path(package),
        BasicVSRNet=BasicVSRNet,
        IconVSRNet=IconVSRNet,
        BasicVSRPlusPlusNet=BasicVSRPlusPlusNet,
        EDVRNet=EDVRNet,
        SPyNet=SPyNet,
        GenerateFrameIndiceswithPadding=GenerateFrameIndiceswithPadding,
    )


def _modulated_deform_conv_forward(
    input: Tensor,
    weight: Tensor,
    bias: Tensor,
    _ones: Tensor,
    offset: Tensor,
    mask: Tensor,
    output: Tensor,
    _columns: Tensor,
    *,
    kernel_h: int,
    kernel_w: int,
    stride_h: int,
    stride_w: int,
    pad_h: int,
    pad_w: int,
    dilation_h: int,
    dilation_w: int,
    group: int,
    deformable_group: int,
    with_bias: bool,
) -> None:
    """mmcv's ``modulated_deform_conv_forward`` kernel (DCNv2: offsets (B, 2*dg*kh*kw, H, W)
    as (dy, dx) pairs, mask (B, dg*kh*kw, H, W)), written into ``output`` by
    ``torchvision.ops.deform_conv2d``, the same layout (BasicSR runs it in place of its own
    compiled kernel). Groups and deformable groups follow from the shapes."""
    from torchvision.ops import deform_conv2d

    assert weight.shape[-2:] == (kernel_h, kernel_w)
    assert input.shape[1] == group * weight.shape[1]
    assert offset.shape[1] == 2 * deformable_group * kernel_h * kernel_w
    output.copy_(
        deform_conv2d(
            input,
            offset,
            weight,
            bias if with_bias else None,
            stride=(stride_h, stride_w),
            padding=(pad_h, pad_w),
            dilation=(dilation_h, dilation_w),
            mask=mask,
        )
    )


def _no_backward(*_: object, **__: object) -> None:
    raise NotImplementedError("mmagic's networks run here under torch.no_grad only")


def mmagic_network(mma: types.SimpleNamespace, name: str) -> nn.Module:
    """mmagic's network at avvsr's paper size, random weights (as :func:`reference_network`:
    the module's initialisation, then N(0, 0.01^2) on every tensor). EDVR as its zoo configs
    build it: TSA fusion, centre frame 2 of 5 (avvsr's EDVR: TSA, centre ``num_frames // 2``).
    mmagic's BasicVSR++ builds its deformable alignment whatever the device."""
    if name == "basicvsr":
        net = mma.BasicVSRNet(mid_channels=64, num_blocks=30)
    elif name == "iconvsr":
        net = mma.IconVSRNet(mid_channels=64, num_blocks=30, keyframe_stride=5, padding=2)
    elif name == "basicvsrpp":
        net = mma.BasicVSRPlusPlusNet(mid_channels=64, num_blocks=7)
    elif name == "spynet":
        net = mma.SPyNet(pretrained=None)
    else:
        large = name == "edvr_l"
        net = mma.EDVRNet(
            in_channels=3,
            out_channels=3,
            mid_channels=128 if large else 64,
            num_frames=5,
            deform_groups=8,
            num_blocks_extraction=5,
            num_blocks_reconstruction=40 if large else 10,
            center_frame_idx=2,
            with_tsa=True,
        )
    return perturbed(net)


def mmagic_test_windows(mma: types.SimpleNamespace, name: str, frames: int) -> tuple[list, str]:
    """``(windows, padding)``: the frame indices of each of ``frames`` output frames' window
    (``frames`` lists of ``num_input_frames``), as the test loader of mmagic's zoo config of
    EDVR size ``name`` reads them (its first transform, ``GenerateFrameIndiceswithPadding``
    with the config's ``padding``, run on a clip of ``frames`` frames), and that padding."""
    from mmengine import Config

    config = Config.fromfile(mma.package / ".mim/configs/edvr" / MMAGIC_EDVR_CONFIGS[name])
    dataset = config.test_dataloader.dataset
    step = dataset.pipeline[0]
    assert step.type == "GenerateFrameIndiceswithPadding", step
    indices = mma.GenerateFrameIndiceswithPadding(padding=step.padding)
    windows = []
    for frame in range(frames):
        sample = {
            "key": os.path.join("clip", f"{frame:08d}"),
            "sequence_length": frames,
            "num_input_frames": dataset.num_input_frames,
            "img_path": "lq",
            "gt_path": "gt",
        }
        windows.append([int(Path(path).stem) for path in indices.transform(sample)["img_path"]])
    return windows, step.padding


def mmagic_parity(folder: Path, networks: list[str]) -> Iterator[dict]:
    """Max |avvsr - mmagic| per backbone and LR size, float64, mmagic's own code: its
    network's state dict saved as its zoo does (``{"state_dict": {"generator.<key>": ...}}``;
    SPyNet as its pretrained file, a bare state dict without the ``mean`` / ``std`` buffers,
    which mmagic's SPyNet registers after loading it strictly), converted and loaded strictly;
    SPyNet's row compares flows, EDVR's runs mmagic's EDVR on its test loader's windows
    (:func:`mmagic_test_windows`). Each row also has the network's parameter count and whether
    its keys and shapes are those of ``tests/data/reference_keys.json``'s mmagic entry (BasicSR's
    networks renamed, :data:`MMAGIC_RENAMES`; "-" for SPyNet, whose fixture is BasicSR's)."""
    mma = import_mmagic()
    fixture = json.loads(REFERENCE_KEYS.read_text())["mmagic"]
    for name in (*networks, "spynet"):
        torch.manual_seed(0)
        net = mmagic_network(mma, name).double()
        file = folder / f"{name}_mmagic_code.pth"
        state = net.state_dict()
        extra = {"parameters": sum(p.numel() for p in net.parameters()), "fixture_keys": "-"}
        reference: Callable = net
        if name == "spynet":
            torch.save({k: v for k, v in state.items() if k not in ("mean", "std")}, file)
        else:
            generator = {f"generator.{k}": v for k, v in state.items()}
            torch.save({"meta": {"note": "mmagic's own network"}, "state_dict": generator}, file)
            extra["fixture_keys"] = "yes" if key_shapes(state) == fixture[name] else "NO"
        if name.startswith("edvr"):
            windows, extra["windows"] = mmagic_test_windows(mma, name, PARITY_FRAMES)
            reference = functools.partial(windowed_forward, net, windows)
        model = converted_model(file).double()
        yield from output_differences(name, file, model, reference, extra)


def mmagic_key(key: str) -> str:
    """BasicSR's key -> mmagic's (:data:`MMAGIC_RENAMES`)."""
    for pattern, replacement in MMAGIC_RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


# ----------------------------------------------------------------------------------------
# reference networks and their files


def reference_network(bsr: types.SimpleNamespace, name: str) -> nn.Module:
    """BasicSR's network at avvsr's paper size, random weights (seeded by the caller):
    BasicSR's own initialisation, every tensor then moved by N(0, 0.01^2) so the
    zero-initialised offset convs carry signal too."""
    if name == "basicvsr":
        net = bsr.BasicVSR(num_feat=64, num_block=30)
    elif name == "iconvsr":
        net = bsr.IconVSR(num_feat=64, num_block=30, keyframe_stride=5, temporal_padding=2)
    elif name == "basicvsrpp":
        with mock.patch("torch.cuda.is_available", return_value=True):  # as on a GPU
            net = bsr.BasicVSRPlusPlus(mid_channels=64, num_blocks=7)
    elif name == "spynet":
        net = bsr.SpyNet()
    else:
        large = name == "edvr_l"
        net = bsr.EDVR(
            num_feat=128 if large else 64,
            num_frame=5,
            deformable_groups=8,
            num_extract_block=5,
            num_reconstruct_block=40 if large else 10,
        )
    return perturbed(net)


def perturbed(net: nn.Module) -> nn.Module:
    """``net`` in eval mode with N(0, 0.01^2) added to every parameter."""
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return net.eval()


def zoo_files(net: nn.Module, name: str, folder: Path) -> dict[str, Path]:
    """Save ``net`` as BasicSR's and mmagic's zoos do; format -> file."""
    state = net.state_dict()
    files = {"basicsr": folder / f"{name}_basicsr.pth", "mmagic": folder / f"{name}_mmagic.pth"}
    if name == "spynet":  # the published file: SpyNet loads it before registering its buffers
        state = {k: v for k, v in state.items() if k not in ("mean", "std")}
        files = {"spynet": folder / "spynet_sintel_final.pth"}
        torch.save({"params": state}, files["spynet"])
        return files
    torch.save({"params": state}, files["basicsr"])
    generator = {f"generator.{mmagic_key(k)}": v for k, v in state.items()}
    torch.save({"meta": {"note": "renamed from BasicSR"}, "state_dict": generator}, files["mmagic"])
    return files


def converted_model(path: Path, **overrides: object) -> nn.Module:
    """The avvsr backbone of a zoo file, loaded strictly (extra ``overrides`` on top)."""
    converted = convert_state_dict(torch.load(path, weights_only=True), source=str(path))
    model = build_backbone(converted.backbone, {**converted.backbone_overrides, **overrides})
    model.load_state_dict(converted.state, strict=True)
    return model.eval()


def reference_forward(bsr: types.SimpleNamespace, net: nn.Module, name: str, lq: Tensor) -> Tensor:
    """BasicSR's output for every frame of ``lq`` (B, T, 3, h, w); EDVR frame by frame on the
    windows of BasicSR's test loader (``reflection_circle``)."""
    if not name.startswith("edvr"):
        return net(lq)
    frames = lq.shape[1]
    windows = [bsr.generate_frame_indices(t, frames, 5, "reflection_circle") for t in range(frames)]
    return windowed_forward(net, windows, lq)


def windowed_forward(net: nn.Module, windows: list[list[int]], lq: Tensor) -> Tensor:
    """A one-frame network's (EDVR's: (B, W, 3, h, w) -> (B, 3, 4h, 4w)) output for every frame
    of ``lq`` (B, T, 3, h, w), frame t from the frames ``windows[t]``: (B, T, 3, 4h, 4w)."""
    return torch.stack([net(lq[:, window]) for window in windows], dim=1)


def key_shapes(state: dict[str, Tensor]) -> dict[str, list[int]]:
    return {key: list(value.shape) for key, value in state.items()}


# ----------------------------------------------------------------------------------------
# measurements


def dump_keys(bsr: types.SimpleNamespace, path: Path) -> None:
    """Write ``{format: {network: {key: shape}}}`` of the reference networks' zoo files."""
    dump: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in (*BACKBONES, "spynet"):
            for fmt, file in zoo_files(reference_network(bsr, name), name, Path(folder)).items():
                blob = torch.load(file, weights_only=True)
                state = blob.get("params") or {
                    k.removeprefix("generator."): v for k, v in blob["state_dict"].items()
                }
                dump.setdefault(fmt, {})[name] = key_shapes(state)
    text = json.dumps(dump, indent=1, sort_keys=True)  # then one shape per line:
    text = re.sub(r"\[[\d,\s]*\]", lambda m: json.dumps(json.loads(m[0])), text)
    path.write_text(text + "\n")


def parity(bsr: types.SimpleNamespace, folder: Path, networks: list[str]) -> Iterator[dict]:
    """Max |avvsr - BasicSR| per backbone and LR size, float64. The mmagic file's converted
    state is compared with the BasicSR file's (equal: the same avvsr model, the same figure)."""
    for name in (*networks, "spynet"):
        torch.manual_seed(0)
        net = reference_network(bsr, name).double()
        files = zoo_files(net, name, folder)
        fmt = "spynet" if name == "spynet" else "basicsr"
        model = converted_model(files[fmt]).double()
        same = "-"
        if "mmagic" in files:
            other = converted_model(files["mmagic"]).double().state_dict()
            same = (
                "yes"
                if all(torch.equal(v, other[k]) for k, v in model.state_dict().items())
                else "NO"
            )
        reference = (
            net if name == "spynet" else functools.partial(reference_forward, bsr, net, name)
        )
        yield from output_differences(name, files[fmt], model, reference, {"mmagic_same": same})


def output_differences(
    name: str, file: Path, model: nn.Module, reference: Callable, extra: dict
) -> Iterator[dict]:
    """Rows of max |``model`` - ``reference``| (float64, :data:`PARITY_FRAMES` random frames;
    IconVSR at 64x64 and 63x66, the others at 64x64): ``reference`` maps LR frames
    (B, T, 3, h, w) to the reference output, or for SPyNet ``(ref, supp)`` (T, 3, h, w) each
    to flows (T, 2, h, w), px. Backbones with a clip-end option also get the row's figure
    with ``clip_ends: mirror`` (``file`` converted again). ``extra`` is copied into every
    row."""
    sizes = [(64, 64), (63, 66)] if name == "iconvsr" else [(64, 64)]
    for size in sizes:
        row = {"network": name, "size": size, **extra}
        with torch.no_grad():
            if name == "spynet":
                ref, supp = torch.rand(2, PARITY_FRAMES, 3, *size, dtype=torch.float64)
                row["converted"] = (model(ref, supp) - reference(ref, supp)).abs().max().item()
                yield row
                continue
            lq = torch.rand(1, PARITY_FRAMES, 3, *size, dtype=torch.float64)
            expected = reference(lq)
            row["converted"] = (model(lq) - expected).abs().max().item()
            if name in CLIP_ENDS_BACKBONES:
                mirror = converted_model(file, clip_ends="mirror").double()
                row["mirror"] = (mirror(lq) - expected).abs().max().item()
        yield row


def speed(
    bsr: types.SimpleNamespace, folder: Path, networks: list[str], repeats: int
) -> list[dict]:
    """Median ms per output frame, float32, the implementations alternating: avvsr as
    converted (NCHW), avvsr with ``channels_last`` (``Acceleration``, the upscaler's
    ``--channels-last``) and BasicSR's network."""
    rows = []
    for name in networks:
        torch.manual_seed(0)
        net = reference_network(bsr, name)
        file = zoo_files(net, name, folder)["basicsr"]
        models = {
            "avvsr": converted_model(file),
            "avvsr_nhwc": Acceleration(channels_last=True).apply(converted_model(file)),
        }
        medians = time_all(bsr, net, models, name, torch.rand(1, 7, 3, 64, 64), repeats)
        rows.append({"network": name, **medians})
    return rows


def time_all(
    bsr: types.SimpleNamespace,
    net: nn.Module,
    models: dict[str, nn.Module],
    name: str,
    lq: Tensor,
    repeats: int,
) -> dict[str, float]:
    """Median ms per output frame of each of avvsr's ``models`` and of BasicSR's ``net`` on
    ``lq``, one warm-up each, then ``repeats`` rounds running each once in turn."""
    calls: dict[str, Callable[[], Tensor]] = {
        side: functools.partial(model, lq) for side, model in models.items()
    }
    calls["basicsr"] = functools.partial(reference_forward, bsr, net, name, lq)
    runs: dict[str, list[float]] = {side: [] for side in calls}
    with torch.no_grad():
        for call in calls.values():
            call()
        for _ in range(repeats):
            for side, call in calls.items():
                start = time.perf_counter()
                call()
                runs[side].append((time.perf_counter() - start) * 1000 / lq.shape[1])
    return {side: statistics.median(times) for side, times in runs.items()}


def forward_peak_mib(name: str, side: str, frames: int) -> float:
    """Extra resident memory (MiB) of one ``torch.no_grad`` forward on 64x64 LR frames.

    A fresh process (this script with ``--probe``) builds the network and the input, resets
    the kernel's peak-RSS mark (``/proc/self/clear_refs``, 5), runs one forward and reports
    ``VmHWM`` minus the RSS before the forward: every page the forward touched, allocator
    caches included. glibc's mmap threshold is pinned (``MALLOC_MMAP_THRESHOLD_``) so large
    tensors are unmapped when freed rather than kept in the heap, the same for both sides.
    """
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "2"}
    command = [sys.executable, __file__, "--probe", name, side, str(frames)]
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return float(out.strip().splitlines()[-1])


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def probe(name: str, side: str, frames: int) -> None:
    """The child of :func:`forward_peak_mib`: prints the forward's extra MiB."""
    torch.set_num_threads(2)
    bsr = import_basicsr()
    torch.manual_seed(0)
    net = reference_network(bsr, name)
    with tempfile.TemporaryDirectory() as folder:
        model = converted_model(zoo_files(net, name, Path(folder))["basicsr"])
    call = (
        (lambda x: model(x))
        if side == "avvsr"
        else (lambda x: reference_forward(bsr, net, name, x))
    )
    lq = torch.rand(1, frames, 3, 64, 64)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    with torch.no_grad():
        out = call(lq)
    peak = _status_kib("VmHWM")
    assert out.shape[-2:] == (256, 256)
    print((peak - before) / 1024)


# ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dump-keys", type=Path, help="only write the reference key shapes to this JSON file"
    )
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument(
        "--networks", nargs="+", choices=BACKBONES, default=list(BACKBONES), help="default: all"
    )
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        help="what to measure (default: all)",
    )
    parser.add_argument(
        "--probe", nargs=3, metavar=("NETWORK", "SIDE", "FRAMES"), help=argparse.SUPPRESS
    )
    parser.add_argument("--mmagic-parity", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if os.environ.get(IN_VENV) != "1":
        python = ensure_venv()
        env = {**os.environ, IN_VENV: "1", "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")])
        )
        if "parity" in args.sections:
            env[MMAGIC_PYTHON] = str(ensure_mmagic_venv())
        raise SystemExit(subprocess.run([str(python), __file__, *sys.argv[1:]], env=env).returncode)
    if args.probe:
        probe(args.probe[0], args.probe[1], int(args.probe[2]))
        return
    if args.mmagic_parity:
        torch.set_num_threads(2)
        with tempfile.TemporaryDirectory() as tmp:
            print_parity_rows(mmagic_parity(Path(tmp), args.mmagic_parity), MMAGIC_COLUMNS)
        return

    torch.set_num_threads(2)
    bsr = import_basicsr()
    if args.dump_keys:
        dump_keys(bsr, args.dump_keys)
        print(f"wrote {args.dump_keys}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if "parity" in args.sections:
            print_parity(bsr, folder, args.networks)
        if "speed" in args.sections:
            print_speed(bsr, folder, args.networks, args.repeats)
    if "memory" in args.sections:
        print_memory(args.networks)


def print_parity(bsr: types.SimpleNamespace, folder: Path, networks: list[str]) -> None:
    print(
        f"Outputs, float64, {PARITY_FRAMES} frames, every frame: "
        "max |avvsr - BasicSR| after conversion"
    )
    print_parity_header(BASICSR_COLUMNS)
    print_parity_rows(parity(bsr, folder, networks), BASICSR_COLUMNS)
    print(
        f"\nmmagic's own code (mmagic 1.2.0, its venv), float64, {PARITY_FRAMES} frames, "
        "every frame: max |avvsr - mmagic| after conversion"
    )
    print_parity_header(MMAGIC_COLUMNS)
    command = [os.environ[MMAGIC_PYTHON], __file__, "--mmagic-parity", *networks]
    subprocess.run(command, check=True)


BASICSR_COLUMNS = (("mmagic_same", "mmagic same", 13),)
MMAGIC_COLUMNS = (
    ("parameters", "parameters", 12),
    ("fixture_keys", "fixture keys", 14),
    ("windows", "EDVR windows", 19),
)
"""The columns after ``mirror ends`` of each parity table: (row key, title, width)."""


def print_parity_header(columns: tuple[tuple[str, str, int], ...]) -> None:
    titles = "".join(f"{title:>{width}}" for _, title, width in columns)
    print(f"{'network':<12}{'LR size':<9}{'converted':>12}{'mirror ends':>14}{titles}")


def print_parity_rows(rows: Iterator[dict], columns: tuple[tuple[str, str, int], ...]) -> None:
    """One line per row of :func:`parity` or :func:`mmagic_parity`; a value a row lacks is
    left blank."""
    for row in rows:
        size = "x".join(map(str, row["size"]))
        line = f"{row['network']:<12}{size:<9}{row['converted']:>12.2e}"
        line += f"{row['mirror']:>14.2e}" if "mirror" in row else f"{'':>14}"
        line += "".join(f"{row.get(key, ''):>{width}}" for key, _, width in columns)
        print(line.rstrip(), flush=True)


def print_speed(
    bsr: types.SimpleNamespace, folder: Path, networks: list[str], repeats: int
) -> None:
    print(
        f"\nSpeed, float32, {torch.get_num_threads()} threads, x4, 7 frames of 64x64, "
        f"median of {repeats} alternating runs (ms per output frame; NHWC: channels_last)"
    )
    print(f"{'network':<12}{'avvsr':>10}{'NHWC':>10}{'BasicSR':>10}{'ratio':>8}{'NHWC':>8}")
    for row in speed(bsr, folder, networks, repeats):
        ratios = (row["avvsr"] / row["basicsr"], row["avvsr_nhwc"] / row["basicsr"])
        print(
            f"{row['network']:<12}{row['avvsr']:>10.1f}{row['avvsr_nhwc']:>10.1f}"
            f"{row['basicsr']:>10.1f}{ratios[0]:>8.2f}{ratios[1]:>8.2f}"
        )


def print_memory(networks: list[str]) -> None:
    print("\nExtra memory of one no_grad forward, float32, 64x64 LR (MiB, peak RSS delta)")
    print(f"{'network':<12}{'T':>4}{'avvsr':>10}{'BasicSR':>10}{'ratio':>8}")
    for name in networks:
        for frames in (7, 14):
            mine, theirs = (forward_peak_mib(name, side, frames) for side in ("avvsr", "basicsr"))
            print(f"{name:<12}{frames:>4}{mine:>10.0f}{theirs:>10.0f}{mine / theirs:>8.2f}")


if __name__ == "__main__":
    main()

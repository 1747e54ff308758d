"""The timm encoder: every backbone family trains, local pretrained weights load (with a
report of what did not fit), and the fine-tuning options reach the optimiser."""
from __future__ import annotations

import pytest
import torch

from timm_support import skip_without

skip_without("timm")

import timm  # noqa: E402

from senolab.checkpoint import load_checkpoint  # noqa: E402
from senolab.engine.config import ConfigError, parse_config  # noqa: E402
from senolab.engine.data import prepare  # noqa: E402
from senolab.engine.trainer import Trainer, backbone_parameters  # noqa: E402
from senolab.errors import InputError  # noqa: E402
from senolab.models import build_encoder, build_model, multitask_losses  # noqa: E402
from senolab.models.timm_encoder import TimmEncoder  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = 64
BACKBONES = ["resnet18", "convnext_atto", "efficientnet_b0", "vit_tiny_patch16_224"]


def batch(size: int = SIZE) -> dict:
    gen = torch.Generator().manual_seed(0)
    mask = torch.zeros(2, 1, size, size)
    mask[:, :, size // 4: size // 2, size // 8: size // 2] = 1
    return {"image": torch.rand(2, 1, size, size, generator=gen), "mask": mask,
            "has_mask": torch.ones(2, dtype=torch.bool), "label": torch.tensor([0, 1]),
            "has_label": torch.ones(2, dtype=torch.bool), "bbox": torch.tensor([[0.125, 0.25, 0.5, 0.5]] * 2),
            "has_bbox": torch.ones(2, dtype=torch.bool)}


@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_family_trains_all_heads(name):
    torch.manual_seed(0)
    model = build_model("timm", {"cls": {"num_classes": 2}, "seg": {}, "box": {}}, {"name": name})
    seen = []
    model.encoder.gradcam_layer.register_forward_hook(lambda module, args, output: seen.append(output))
    data = batch()
    out = model(data)

    assert out["embedding"].shape == (2, model.encoder.embedding_dim)
    assert out["logits"].shape == (2, 2) and out["bbox"].shape == (2, 4)
    assert out["seg_logits"].shape == (2, 1, SIZE, SIZE)
    assert ("tokens" in out) == name.startswith("vit")
    assert seen[0].dim() == 4 and seen[0].shape[1] == model.encoder.feature_channels
    sum(multitask_losses(out, data).values()).backward()
    # timm zero-initialises the last norm of each residual block (zero_init_last), which
    # starves the block's other layers at the very first step only: check after one step
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.zero_grad()
    sum(multitask_losses(model(data), data).values()).backward()
    starved = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not starved, f"parameters without gradient: {starved[:8]}"
    assert model.shared_parameters(), "GradNorm needs the shared layer's parameters"


def test_classification_only_has_no_decoder_and_input_must_fit():
    encoder = build_encoder("timm", name="resnet18", decoder=False)
    assert encoder.decoder is None and encoder.decoder_channels == 0 and encoder.input_multiple == 32
    with pytest.raises(ValueError, match="multiples of 32"):
        encoder(torch.rand(1, 1, 48, 64))
    with pytest.raises(InputError, match="timm has no model 'resnet_nineteen'"):
        build_encoder("timm", name="resnet_nineteen")


def test_local_pretrained_file_loads_and_reports_what_did_not_fit(tmp_path, capsys):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    rgb = timm.create_model("resnet18", in_chans=3)  # a published file: 3 channels and a classifier
    state = {k: v.contiguous() for k, v in rgb.state_dict().items() if k != "layer4.1.bn2.weight"}
    path = tmp_path / "resnet18.safetensors"
    save_file(state, str(path))

    encoder = TimmEncoder("resnet18", pretrained=str(path), decoder=False)
    report = encoder.load_report
    assert report.adapted == ["conv1.weight"]  # RGB filters summed into one grey channel, timm's way
    assert torch.allclose(encoder.backbone.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(encoder.backbone.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    assert set(report.unused) == {"fc.weight", "fc.bias"}
    assert report.missing == ["layer4.1.bn2.weight"]
    printed = capsys.readouterr().out
    assert "2 unused from the file: fc.bias, fc.weight" in printed and "layer4.1.bn2.weight" in printed
    TimmEncoder("resnet18", pretrained=str(path), decoder=False)
    assert capsys.readouterr().out == "", "a file's partial load is reported once per process"

    # a senolab model checkpoint (torch file, weights_only) initialises another task's encoder fully
    torch.manual_seed(2)
    trained = build_model("timm", {"cls": {}, "seg": {}}, {"name": "resnet18"})
    torch.save({"model": trained.state_dict(), "epoch": 3}, tmp_path / "best.pt")
    restored = TimmEncoder("resnet18", pretrained=str(tmp_path / "best.pt"), decoder=False)
    assert not restored.load_report.partial
    image = torch.rand(1, 1, SIZE, SIZE)
    assert torch.equal(restored.eval()(image).embedding, trained.encoder.eval()(image).embedding)

    with pytest.raises(InputError, match="none of its .* tensors fit"):
        TimmEncoder("convnext_atto", pretrained=str(path), decoder=False)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="junk.safetensors: not a readable safetensors file"):
        TimmEncoder("resnet18", pretrained=str(tmp_path / "junk.safetensors"))


TINY = {
    "data": {"synthetic": {"n_sites": 2, "images_per_site": 12, "image_size": 64}, "image_size": 32,
             "split": {"test_fraction": 0.25, "val_fraction": 0.25}},
    "model": {"encoder": "timm", "encoder_options": {"name": "convnext_atto"},
              "heads": {"classification": True, "segmentation": True, "bbox": False}},
    "train": {"epochs": 2, "batch_size": 8, "warmup_epochs": 0, "early_stopping": {"patience": 5}},
}


def _with(**train) -> dict:
    return {**TINY, "train": {**TINY["train"], **train}}


def test_frozen_encoder_and_its_lower_learning_rate(tmp_path):
    config = parse_config(_with(freeze_encoder_epochs=1, encoder_lr_scale=0.1))
    data = prepare(config.data, progress=False)
    trainer = Trainer(config, data, tmp_path)
    heads, backbone = trainer.optimizer.param_groups
    assert (heads["lr_scale"], backbone["lr_scale"]) == (1.0, 0.1)
    assert {id(p) for p in backbone["params"]} == {id(p) for p in backbone_parameters(trainer.model)}
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}

    trainer.fit(progress=False, until_epoch=1)  # the frozen epoch
    after = dict(trainer.model.named_parameters())
    assert trainer.optimizer.param_groups[1]["lr"] == pytest.approx(0.1 * trainer.optimizer.param_groups[0]["lr"])
    moved = {n for n in start if not torch.equal(start[n], after[n].detach())}
    assert moved and all(not n.startswith("encoder.backbone.") for n in moved)
    assert any(n.startswith("encoder.decoder.") for n in moved), "the new decoder trains while the backbone waits"

    Trainer(config, data, tmp_path).fit(progress=False)  # resumed for epoch 2: the backbone trains too
    last = load_checkpoint(tmp_path / "last.pt")["model"]  # (fit hands back the best epoch's model)
    assert not torch.equal(last["encoder.backbone.stem.0.weight"], start["encoder.backbone.stem.0.weight"])


def test_layer_decay_groups_the_vit_blocks(tmp_path):
    config = parse_config({**_with(layer_decay=0.5, encoder_lr_scale=0.5),
                           "model": {**TINY["model"], "encoder_options": {"name": "vit_tiny_patch16_224"}}})
    data = prepare(config.data, progress=False)
    groups = Trainer(config, data, tmp_path / "a").optimizer.param_groups
    assert groups[0]["lr_scale"] == 1.0
    scales = sorted({g["lr_scale"] for g in groups[1:]})
    assert len(scales) >= 12 and max(scales) == 0.5  # the last layer at the encoder's scale, deeper decayed
    trainer = Trainer(config, data, tmp_path / "b")
    layered = [id(p) for g in trainer.optimizer.param_groups[1:] for p in g["params"]]
    assert sorted(layered) == sorted(id(p) for p in backbone_parameters(trainer.model))  # each once
    with pytest.raises(ConfigError, match="layer_decay needs a timm encoder"):
        parse_config({"model": {"encoder": "unet"}, "train": {"layer_decay": 0.7}})


def test_a_packaged_model_is_rebuilt_without_its_initial_weights(tmp_path):
    """The weights a model started from are not needed to rebuild it for its trained ones
    (a moved file; `pretrained: true` on a machine without internet)."""
    from senolab.engine.trainer import model_from_config

    config = parse_config({**TINY, "model": {**TINY["model"], "encoder_options": {
        "name": "convnext_atto", "pretrained": str(tmp_path / "moved.safetensors")}}})
    data = prepare(config.data, progress=False)
    with pytest.raises(InputError, match="moved.safetensors: no such file"):
        model_from_config(config, data)
    assert model_from_config(config, data, initial_weights=False).encoder.load_report is None

"""Training in the raw-image mode: the staged unfreezing, fixed BatchNorm statistics, the loss
ramp, exact resume across stages, and the unfreezing under two gloo processes."""
import argparse
import os

import pytest
import torch
from helpers import join_group, model_from_options, spawn, train_from_options, trainer_for, write_image_layout

from lib.cli.train import default_options
from lib.formats.checkpoint import load_checkpoint
from lib.training import trainer as training
from lib.training.config import TrainConfig

PARTS = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_image_layout(str(tmp_path_factory.mktemp("images")))


def grid_opt(tmp_path, images, bert_dir, name="run", **overrides):
    """A tiny raw-image run: a ResNet-101 of stem width 4 (128 channels) on 64 x 64 pixels,
    random backbone weights; 40 training captions in 5 batches of 8."""
    settings = dict(data_path=images[0], data_name=images[1], precomp_enc_type="backbone",
                    backbone_path="none", backbone_width=4, input_scale_factor=0.25, bert_path=bert_dir,
                    embed_size=32, batch_size=8, num_epochs=5, lr_update=100, workers=0, log_step=5,
                    val_step=10 ** 9, device="cpu", seed=3, embedding_warmup_epochs=1,
                    backbone_warmup_epochs=1, logger_name=str(tmp_path / name / "log"),
                    model_name=str(tmp_path / name / "ckpt"))
    settings.update(overrides)
    return default_options(**settings)


def test_schedule_of_fixed_blocks():
    default = TrainConfig()  # embedding warm-up 2, backbone warm-up 5
    assert [default.fixed_blocks(e) for e in range(20)] == [4] * 2 + [3] * 5 + [2] * 5 + [1] * 5 + [0] * 3
    recipe = TrainConfig(embedding_warmup_epochs=1, backbone_warmup_epochs=0)
    assert [recipe.fixed_blocks(e) for e in range(4)] == [4, 0, 0, 0]
    assert [recipe.ramps_loss(e) for e in range(3)] == [False, True, False]
    assert TrainConfig(embedding_warmup_epochs=0).fixed_blocks(0) == 3


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed_parts(before, after):
    """The backbone parts with a parameter that moved between two snapshots."""
    return {part for part in PARTS
            if any(not torch.equal(before[k], after[k]) for k in before
                   if k.startswith(f"backbone.{part}.") and "running" not in k and "num_batches" not in k)}


@pytest.fixture(scope="module")
def staged_run(tmp_path_factory, images, tiny_bert_dir):
    """Five epochs (frozen, then 3, 2, 1 and 0 fixed blocks), the weights kept after each."""
    tmp_path = tmp_path_factory.mktemp("staged")
    opt = grid_opt(tmp_path, images, tiny_bert_dir)
    snapshots = []
    original = training.Trainer.validate_and_save

    def keep(self, epoch, end_of_epoch):
        snapshots.append(snapshot(self.model))
        return original(self, epoch, end_of_epoch)

    mp = pytest.MonkeyPatch()
    mp.setattr(training.Trainer, "validate_and_save", keep)
    try:
        start = snapshot(training.build_model(*_model_build_args(opt)))
        result = train_from_options(opt)
    finally:
        mp.undo()
    return opt, [start] + snapshots, result


def _model_build_args(opt):
    from lib.cli.train import train_configs
    return train_configs(opt)[0], opt.bert_path, opt.seed, "cpu", "none"


def test_each_epoch_trains_the_parts_of_its_stage(staged_run):
    _, snapshots, _ = staged_run
    trained = [changed_parts(a, b) for a, b in zip(snapshots, snapshots[1:])]
    assert trained == [set(), {"layer4"}, {"layer3", "layer4"}, {"layer2", "layer3", "layer4"}, set(PARTS)]
    # the image encoder's FC and the similarity train from the first epoch (the official code left the
    # similarity out of its optimizer)
    assert not torch.equal(snapshots[0]["img_enc.fc.weight"], snapshots[1]["img_enc.fc.weight"])
    assert not torch.equal(snapshots[0]["sim.E"], snapshots[1]["sim.E"])


def test_batchnorm_statistics_never_change(staged_run):
    _, snapshots, _ = staged_run
    statistics = [k for k in snapshots[0] if k.startswith("backbone.") and ("running" in k or "num_batches" in k)]
    assert statistics and all(torch.equal(s[k], snapshots[0][k]) for s in snapshots for k in statistics)


def test_the_first_unfrozen_epoch_ramps_the_loss(staged_run):
    _, _, result = staged_run
    losses = result["losses"]  # 5 steps per epoch; epoch 1 is the first with the backbone training
    assert len(losses) == 25
    assert losses[5] == 0.0 and all(loss > 0 for loss in losses[:5] + losses[6:])
    # batch i of epoch 1 is scaled by i / (40 // 8 + 1): the last one by 4/6 of its loss
    assert losses[9] < losses[10]


def test_the_checkpoint_records_the_mode_and_evaluates(staged_run):
    opt, snapshots, result = staged_run
    ckpt = load_checkpoint(os.path.join(opt.model_name, "checkpoint.pth"))
    config = ckpt["model_config"]
    assert (config["precomp_enc_type"], config["backbone_source"], config["backbone_width"]) == \
        ("backbone", "detector", 4)
    assert config["input_scale_factor"] == 0.25 and config["img_dim"] == 128
    assert ckpt["train_config"]["embedding_warmup_epochs"] == 1
    assert torch.equal(ckpt["model"]["backbone.layer1.0.conv1.weight"], snapshots[-1]["backbone.layer1.0.conv1.weight"])
    assert result["last_metrics"]["rsum"] > 0


def test_resume_across_a_stage_is_exact(tmp_path, images, tiny_bert_dir, staged_run):
    _, snapshots, _ = staged_run
    first = grid_opt(tmp_path, images, tiny_bert_dir, name="resumed", num_epochs=2)
    train_from_options(first)
    resumed = grid_opt(tmp_path, images, tiny_bert_dir, name="resumed", num_epochs=3,
                       resume=os.path.join(first.model_name, "checkpoint.pth"))
    train_from_options(resumed)
    state = load_checkpoint(os.path.join(resumed.model_name, "checkpoint.pth"))["model"]
    assert all(torch.equal(state[k], v) for k, v in snapshots[3].items())


# ---------------------------------------------------------------- two processes

def unfreezing_worker(rank, world, options, out_dir):
    from lib.runtime import distributed
    join_group(rank, world, os.path.join(out_dir, "rendezvous"))
    original = training.Trainer.run

    def run_and_keep(self, start_epoch):
        result = original(self, start_epoch)
        torch.save(snapshot(self.model), os.path.join(out_dir, f"rank{rank}.pt"))
        return result

    training.Trainer.run = run_and_keep
    try:
        train_from_options(argparse.Namespace(**options))
    finally:
        distributed.cleanup()


def test_parameters_unfrozen_mid_run_are_averaged_over_two_processes(tmp_path, images, tiny_bert_dir,
                                                                     staged_run):
    """Epoch 0 trains with the backbone frozen, epoch 1 with all of it: its gradients must be
    averaged like every other's, or each process steps with its own half-batch and the replicas
    drift apart (a DistributedDataParallel wrapper built in epoch 0 tracks no backbone parameter)."""
    opt = grid_opt(tmp_path, images, tiny_bert_dir, num_epochs=2, backbone_warmup_epochs=0)
    spawn(unfreezing_worker, (2, vars(opt), str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    start = staged_run[1][0]
    assert changed_parts(start, ranks[0]) == set(PARTS)
    drift = {key: float((value.float() - ranks[1][key].float()).abs().max()) for key, value in ranks[0].items()}
    assert max(drift.values()) <= 1e-6, max(drift, key=drift.get)


def test_bf16_step_trains_the_backbone(tmp_path, images, tiny_bert_dir):
    """Under --amp bf16 the backbone runs in bfloat16 and its float32 weights still get gradients."""
    opt = grid_opt(tmp_path, images, tiny_bert_dir, amp="bf16", embedding_warmup_epochs=0, backbone_warmup_epochs=0)
    model = model_from_options(opt).train()
    model.backbone.set_fixed_blocks(0)
    trainer = trainer_for(model, opt)
    seen = []
    model.backbone.layer4.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    before = model.backbone.conv1.weight.detach().clone()
    captions = torch.randint(1, 50, (4, 7))
    loss = trainer.train_step(torch.randn(4, 3, 64, 64), captions, torch.full((4,), 7))
    assert seen == [torch.bfloat16] and model.backbone.conv1.weight.dtype == torch.float32
    assert loss > 0 and not torch.equal(before, model.backbone.conv1.weight)

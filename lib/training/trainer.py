"""The trainer: optimizer groups, the train step, the schedule, validation, checkpoints, resume, logs.

`train(model_config, train_config, runtime)` runs a whole training in one process
or, under torchrun, in each of several processes (lib.runtime.distributed explains
the gradient arithmetic). The model (lib.model.xdim_model.XDimModel) owns no
optimizer and no step: `Trainer` does, and DistributedDataParallel wraps the one
model module.

Reproducibility: at the start of every epoch python's, numpy's and torch's
random generators are reseeded from (seed, epoch, rank), the shuffle is a
function of (seed, epoch) and the data augmentation of (seed, epoch, item).
So an epoch's randomness never depends on what ran before it, and resuming
from an end-of-epoch checkpoint (weights, optimizer state, epoch, best rSum,
iteration counter) continues exactly as the uninterrupted run would have.
"""
import dataclasses
import logging
import os
import random
import sys
import time

import numpy as np
import torch
from torch.nn.utils import clip_grad_norm_
from tqdm import tqdm

from lib.data import precomp
from lib.errors import Interrupted, XDimError, first_line
from lib.evaluation.scoring import split_metrics
from lib.formats.atomic import write_json
from lib.formats.checkpoint import (
    checkpoint_configs,
    copy_checkpoint,
    load_checkpoint,
    new_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
    training_state,
)
from lib.model.backbone import ALL_FROZEN
from lib.model.bert import bert_max_positions, load_tokenizer, resolve_bert_path
from lib.model.loss import build_loss
from lib.model.xdim_model import XDimModel
from lib.runtime import distributed
from lib.training import run_lock
from lib.training.tb_logger import TBLogger

LOGGER_NAME = "xdim.train"
WEIGHT_DECAY = 1e-4
BERT_LR_FACTOR = 0.1
TEXT_LOGGERS = (LOGGER_NAME, precomp.LOGGER_NAME)
CHECKPOINT = "checkpoint.pth"
BEST = "model_best.pth"
CONFIGS = "configs.json"
# TensorBoard tags of the validation metrics, as in the VSE family's logs.
METRIC_TAGS = {"i2t_r1": "r1", "i2t_r5": "r5", "i2t_r10": "r10", "i2t_medr": "medr",
               "i2t_meanr": "meanr", "t2i_r1": "r1i", "t2i_r5": "r5i", "t2i_r10": "r10i",
               "t2i_medr": "medri", "t2i_meanr": "meanri", "rsum": "rsum"}


# ---------------------------------------------------------------- set-up

def seed_everything(seed, epoch=0, rank=0):
    """Seed python, numpy and torch (all devices) from (seed, epoch, rank)."""
    mixed = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
    random.seed(mixed)
    np.random.seed(mixed)
    torch.manual_seed(mixed)


def per_rank_batch(batch_size, world):
    """The share of the global batch of each process; XDimError unless it divides evenly."""
    if batch_size <= 0 or batch_size % world:
        raise XDimError(f"--batch_size {batch_size} is the global batch and must be a positive "
                        f"multiple of the number of processes ({world})")
    return batch_size // world


def make_train_loader(config, caption_tokenizer, model_config, augment=True):
    """This process's training batches: a per-rank share of each global batch.

    Under torchrun each process reads its share of every epoch's shuffle; the
    shuffle depends only on (seed, epoch). `augment=False` turns region dropping
    and word perturbation off (used to compare runs exactly). In the raw-image mode the
    batches hold pixels (lib.data.images), always augmented (crops, flips, words).
    """
    world = distributed.world_size()
    if model_config.uses_backbone:
        from lib.data import images
        files = images.open_image_split(config.data_path, config.data_name, "train", config.image_root or None)
        loader = images.image_train_loader(files, caption_tokenizer, per_rank_batch(config.batch_size, world),
                                           images.PixelConfig.for_model(model_config), workers=config.workers, seed=config.seed,
                                           num_replicas=world, rank=distributed.rank())
    else:
        files = precomp.open_split(config.data_path, config.data_name, "train", img_dim=model_config.img_dim)
        loader = precomp.train_loader(files, caption_tokenizer, batch_size=per_rank_batch(config.batch_size, world),
                                      workers=config.workers, seed=config.seed, augment=augment,
                                      num_replicas=world, rank=distributed.rank())
    if len(loader) == 0:  # the last incomplete batch is dropped
        raise XDimError(f"--batch_size {config.batch_size}: {files.captions_path} holds {files.n_captions} "
                        f"captions, fewer than one batch, so training would take no step; give a "
                        f"--batch_size of at most {files.n_captions} or more training data")
    return loader


def setup_text_log(folder, enabled):
    """The 'xdim.train' logger: train.log in `folder` plus the console (main rank only).

    The data's warnings (the 'lib.data' logger: truncated captions, [UNK] words) go there too.
    train.log is written from `open_text_log` on, when the checks before work have passed,
    so a refused or failed start leaves no file (nor adds lines to a busy run's log).
    """
    close_text_log()
    logger = logging.getLogger(LOGGER_NAME)
    logger.propagate = False
    logger.setLevel(logging.INFO if enabled else logging.WARNING)
    if enabled:
        file_handler = _HeldFileHandler(os.path.join(folder, "train.log"))
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        for handler in (file_handler, _TqdmHandler()):
            for name in TEXT_LOGGERS:
                logging.getLogger(name).addHandler(handler)
    return logger


def open_text_log(logger):
    """Start writing train.log: the lines logged so far, then every new one."""
    for handler in logger.handlers:
        if isinstance(handler, _HeldFileHandler):
            handler.open()


class _HeldFileHandler(logging.FileHandler):
    """A log file that holds its records in memory until `open()` creates (or appends to) it.

    A failed write (a full disk) stops the run with one line naming the file, instead of
    logging's traceback on stderr for every line.
    """

    def __init__(self, path):
        super().__init__(path, encoding="utf-8", delay=True)
        self.held = []

    def open(self):
        held, self.held = self.held, None
        for record in held:
            super().emit(record)

    def emit(self, record):
        if self.held is not None:
            self.held.append(record)
        else:
            super().emit(record)

    def handleError(self, record):
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            raise XDimError(f"{self.baseFilename}: cannot write the training log ({error.strerror or error}); "
                            f"free some space, then --resume the last checkpoint") from None
        super().handleError(record)

    def close(self):
        try:
            super().close()
        except OSError:  # the lines that could not be flushed were reported when written
            pass


class _TqdmHandler(logging.Handler):
    """Console lines that do not break tqdm's progress bars."""

    def emit(self, record):
        tqdm.write(self.format(record))


def close_text_log():
    for name in TEXT_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()


# ---------------------------------------------------------------- resume

def read_resume(config, sim):
    """The `config.resume` checkpoint, read before anything is built.

    XDimError for a missing, corrupt or foreign file, and, unless reset_start_epoch
    starts again from epoch 0, for one whose run already reached num_epochs or that
    was trained with another similarity than `sim`.
    """
    state = load_checkpoint(config.resume)
    if not isinstance(state.get("model"), dict):
        raise XDimError(f"{config.resume}: not a checkpoint of this codebase (official release files "
                        "hold no training state; evaluate them with eval.py)")
    trained_with = checkpoint_configs(state)["model"].get("sim", "xdim")
    if trained_with != sim and not config.reset_start_epoch:
        raise XDimError(f"{config.resume}: trained with --sim {trained_with}, not --sim {sim} "
                        "(resume with the same --sim, or start anew with --reset_start_epoch)")
    epoch = state.get("epoch")
    if not config.reset_start_epoch and isinstance(epoch, int) and epoch >= config.num_epochs:
        raise XDimError(f"--num_epochs {config.num_epochs}: {config.resume} already finished epoch {epoch}; "
                        "ask for more epochs to continue it")
    return state


# ---------------------------------------------------------------- the trainer

def build_optimizer(model, learning_rate, backbone_lr_factor=0.01):
    """AdamW, weight decay 1e-4: base lr for the image encoder, text projection and similarity;
    base x 0.1 for BERT; base x backbone_lr_factor for the backbone (raw-image mode). Frozen
    parameters stay out, except the backbone's: they all join from the start, and AdamW skips
    those without a gradient (no update, no weight decay, no state) until their stage unfreezes
    them, so the optimizer's state is the same whichever epoch a run resumes from. Each group
    keeps its `base_lr`."""
    trainable = lambda module: [p for p in module.parameters() if p.requires_grad]
    bert_lr = learning_rate * BERT_LR_FACTOR
    groups = [
        {"name": "main", "params": trainable(model.img_enc) + trainable(model.txt_enc.proj) + trainable(model.sim),
         "lr": learning_rate, "base_lr": learning_rate},
        {"name": "bert", "params": trainable(model.txt_enc.bert), "lr": bert_lr, "base_lr": bert_lr},
    ]
    if model.backbone is not None:
        backbone_lr = learning_rate * backbone_lr_factor
        groups.append({"name": "backbone", "params": list(model.backbone.parameters()), "lr": backbone_lr,
                       "base_lr": backbone_lr})
    return torch.optim.AdamW(groups, lr=learning_rate, weight_decay=WEIGHT_DECAY)


class Trainer:
    """One training run: the model, its optimizer and loss, the data, validation and checkpoints.

    `model` is an XDimModel on its device; under torchrun it is wrapped once in
    DistributedDataParallel (`self.network`), and everything but the train step's
    forward uses the bare model.
    """

    def __init__(self, model, config, loader, dev_files, caption_tokenizer, logger, tb):
        self.model = model
        self.config = config
        self.loader = loader
        self.dev_files = dev_files
        self.caption_tokenizer = caption_tokenizer
        self.logger = logger
        self.tb = tb
        self.optimizer = build_optimizer(model, config.learning_rate, config.backbone_lr_factor)
        self.criterion = build_loss(config.loss, config)
        self.network = model
        self.loss_scale = 1.0
        self.iterations = 0
        self.best_rsum = 0.0
        self.losses = []
        self.last_metrics = None

    def wrap_for_processes(self):
        """Wrap the model in DDP when running under torchrun (a no-op otherwise).

        Called again whenever the set of trainable parameters changes (the backbone's
        stages, `set_backbone_stage`). DistributedDataParallel registers its gradient
        hooks and buckets only for the parameters that require gradients when it is
        built, and a parameter outside them keeps its local gradient: unfrozen under an
        old wrapper, each process would step it with its own batch's gradient and the
        replicas would drift apart silently. A new wrapper over the same module tracks
        exactly the parameters trainable now, so every one of them is averaged over the
        processes, as the module docstring of lib.runtime.distributed explains. Building
        it broadcasts rank 0's parameters, which are already equal on every rank (same
        initialisation, same averaged steps), so rewrapping changes no value.
        """
        self.network = distributed.wrap_model(self.model)

    def set_backbone_stage(self, epoch):
        """Freeze and unfreeze the backbone's parts as the schedule says for `epoch`
        (TrainConfig.fixed_blocks); rewrap for DDP when the trainable set changed."""
        if self.model.backbone is None:
            return
        fixed = self.config.fixed_blocks(epoch)
        if fixed == self.model.backbone.fixed_blocks:
            return
        self.model.backbone.set_fixed_blocks(fixed)
        if self.network is not self.model:
            self.wrap_for_processes()
        self.logger.info("epoch %d: backbone %s", epoch,
                         "frozen" if fixed == ALL_FROZEN else f"training, {fixed} fixed blocks")

    # ---- the schedule and the step

    def set_learning_rate_factor(self, factor):
        """Every group's lr becomes its base lr times `factor` (0.1 after lr_update)."""
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

    def current_lr(self):
        return self.optimizer.param_groups[0]["lr"]

    def train_step(self, images, captions, lengths, image_lengths=None):
        """One optimisation step on a batch of matching pairs; -> the loss (float).

        Under torchrun each process scores its own images against the captions of
        all processes and the score rows are gathered, so the loss sees the whole
        global batch's negatives. The loss is multiplied by `loss_scale` (the raw-image
        mode's ramp, else 1). A non-finite loss raises XDimError before any weight changes.
        The similarity still scores in blocks here, but autograd keeps every block's
        activations for the backward pass, so in training the block size does not bound
        memory (the batch size does); it does in evaluation, without gradients.
        """
        self.iterations += 1
        region_lengths = image_lengths if self.config.mask_padded_regions else None
        scores = self.network(images, captions, lengths, region_lengths,  # forward: (B/world, B)
                              gather_captions=distributed.gather_captions,
                              mask_padded=self.config.mask_padded_regions)
        loss = self.criterion(distributed.gather_rows(scores)) * self.loss_scale  # the global (B, B)
        if not torch.isfinite(loss):
            raise XDimError(f"loss is {loss.item()} at iteration {self.iterations}: training stopped "
                            f"({self.saved_so_far()}; try a lower --learning_rate)")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        return loss.item()

    def saved_so_far(self):
        """What a stopped run leaves: 'the last saved checkpoint PATH is intact' or 'no checkpoint was written'."""
        saved = [os.path.join(self.config.model_name, name) for name in (CHECKPOINT, BEST)]
        saved = [path for path in saved if os.path.isfile(path)]
        return f"the last saved checkpoint {saved[0]} is intact" if saved else "no checkpoint was written"

    # ---- resume and checkpoints

    def resume(self, state):
        """Load a resume checkpoint `state`; -> the epoch to start from.

        Without reset_start_epoch also the optimizer state, epoch, best rSum and
        iteration counter; with it only the weights (a fresh run from epoch 0).
        XDimError (one line) for a model of another shape.
        """
        path = self.config.resume
        self.model.load_state_dict(state["model"], path=path)
        if self.config.reset_start_epoch:
            self.logger.info("loaded weights from %s; starting again from epoch 0", path)
            return 0
        try:
            start_epoch = self.load_state(training_state(state))
        except (KeyError, ValueError, TypeError) as error:
            raise XDimError(f"{path}: cannot restore the training state ({error})") from None
        self.logger.info("resumed from %s: epoch %d, iteration %d, best rsum %.2f",
                         path, start_epoch, self.iterations, self.best_rsum)
        return start_epoch

    def state(self, next_epoch, rsum=None):
        """The trainer's state, as resumable checkpoints store it (resuming starts at `next_epoch`);
        `rsum`: the validation rSum of the current weights, when known."""
        state = {"optimizer": self.optimizer.state_dict(), "epoch": int(next_epoch),
                 "best_rsum": float(self.best_rsum), "iterations": int(self.iterations)}
        if rsum is not None:
            state["rsum"] = float(rsum)
        return state

    def load_state(self, state):
        """Restore what `state` saved (a dict from training_state) -> the epoch to start from."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.best_rsum, self.iterations = float(state["best_rsum"]), int(state["iterations"])
        return int(state["epoch"])

    def checkpoint(self, next_epoch, rsum=None):
        """The resumable checkpoint dict of the current state (resuming starts at `next_epoch`)."""
        return new_checkpoint(self.model, self.config, self.state(next_epoch, rsum))

    def repair_best(self, state):
        """Resuming into a --model_name folder without model_best.pth: restore it from the resume
        file when that file proves to hold the best weights (its own rSum is the best rSum);
        otherwise forget the best rSum, so that the next validation writes a model_best.pth."""
        best = os.path.join(self.config.model_name, BEST)
        if not distributed.is_main() or os.path.exists(best):
            return
        if state.get("rsum") is not None and state.get("rsum") == state.get("best_rsum"):
            copy_checkpoint(self.config.resume, best)
            self.logger.info("restored the missing %s from %s, which holds the best weights (rsum %.2f)",
                             best, self.config.resume, self.best_rsum)
            return
        self.logger.warning("warning: %s is missing and %s does not hold the best weights (rsum %.2f); "
                            "the next validation's model will be saved as the best", best,
                            self.config.resume, self.best_rsum)
        self.best_rsum = float("-inf")

    # ---- validation (every rank scores its share) and checkpoints (main rank only; the others wait)

    def validate(self, epoch):
        """Metrics on dev, scored by all ranks together; the main rank gets and logs them, the others None."""
        # Image files are decoded by --workers processes; region features are read in this one.
        workers = self.config.workers if self.model.backbone is not None else 0
        metrics = split_metrics(self.model, self.dev_files, self.caption_tokenizer,
                                batch_size=self.config.batch_size, workers=workers, progress=True)
        if distributed.is_main():
            self.last_metrics = metrics
            for key, tag in METRIC_TAGS.items():
                self.tb.log_value(tag, metrics[key], self.iterations)
            self.logger.info(
                "epoch %d iter %d: i2t R@1 %.2f R@5 %.2f R@10 %.2f medr %.1f meanr %.1f | "
                "t2i R@1 %.2f R@5 %.2f R@10 %.2f medr %.1f meanr %.1f | rsum %.2f",
                epoch, self.iterations, *(metrics[k] for k in METRIC_TAGS))
        self.model.train()
        return metrics

    def save(self, next_epoch, metrics, end_of_epoch):
        """Write model_best.pth (when rSum improved) and checkpoint.pth (end of epoch).

        model_best.pth goes first: a run cut between the two resumes from the previous
        checkpoint.pth, so no checkpoint ever records a best rSum whose weights were not saved.
        """
        if not distributed.is_main():
            return
        is_best = metrics["rsum"] > self.best_rsum
        self.best_rsum = max(self.best_rsum, metrics["rsum"])
        os.makedirs(self.config.model_name, exist_ok=True)
        state = self.checkpoint(next_epoch, metrics["rsum"])
        last = os.path.join(self.config.model_name, CHECKPOINT)
        best = os.path.join(self.config.model_name, BEST)
        target = best if is_best else last
        try:
            if is_best:
                save_checkpoint(state, best)
            if end_of_epoch:
                target = last
                if is_best:
                    copy_checkpoint(best, last)
                else:
                    save_checkpoint(state, last)
        except OSError as error:  # a folder gone read-only, a device error
            advice = f"then --resume {last}" if os.path.exists(last) else "run the training again"
            raise XDimError(f"{target}: cannot write the checkpoint ({error.strerror or first_line(error)}); "
                            f"the previous one, if any, is intact; {advice}") from None
        except XDimError as error:  # a full disk or quota, said by the atomic write
            raise XDimError(f"{error}; then --resume {last}" if os.path.exists(last) else str(error)) from None
        if is_best:
            self.logger.info("new best rsum %.2f -> %s", self.best_rsum, best)

    def validate_and_save(self, epoch, end_of_epoch):
        metrics = self.validate(epoch)
        # A mid-epoch best restarts its epoch when resumed; an end-of-epoch one the next.
        self.save(epoch + 1 if end_of_epoch else epoch, metrics, end_of_epoch)
        distributed.barrier()

    # ---- one epoch

    def start_epoch(self, epoch):
        config = self.config
        seed_everything(config.seed, epoch, distributed.rank())
        precomp.set_loader_epoch(self.loader, epoch)
        self.set_learning_rate_factor(config.lr_factor(epoch))
        self.criterion.start_epoch(epoch)
        self.set_backbone_stage(epoch)
        self.model.train()
        self.tb.log_value("epoch", epoch, self.iterations)

    def train_epoch(self, epoch):
        """One pass over the training data, with mid-epoch validation every val_step."""
        self.start_epoch(epoch)
        n_batches = len(self.loader)
        bar = tqdm(self.loader, desc=f"epoch {epoch}", total=n_batches,
                   disable=not distributed.is_main(), dynamic_ncols=True)
        start = time.time()
        ramp = self.loss_ramp(epoch)
        for i, (images, image_lengths, captions, lengths, _, image_indices) in enumerate(bar):
            if self.model.backbone is None:  # decoded pixels are always finite
                precomp.check_finite_images(images, image_indices, self.loader.dataset.files.images_path)
            self.loss_scale = 1.0 if ramp is None else i / ramp
            # train_step raises XDimError on a non-finite loss, before touching the weights.
            loss = self.train_step(images, captions, lengths, image_lengths)
            self.losses.append(loss)
            self.log_step(bar, epoch, i, n_batches, loss, start)
            if self.config.val_step > 0 and self.iterations % self.config.val_step == 0 and i + 1 < n_batches:
                self.validate_and_save(epoch, end_of_epoch=False)
        bar.close()

    def loss_ramp(self, epoch):
        """The raw-image mode's ramp in the first epoch the backbone trains: batch i's loss is
        scaled by i / this (captions // global batch + 1, the official count); None otherwise."""
        if self.model.backbone is None or not self.config.ramps_loss(epoch):
            return None
        return len(self.loader.dataset) // self.config.batch_size + 1

    def log_step(self, bar, epoch, i, n_batches, loss, start):
        lr = self.current_lr()
        self.tb.log_value("loss", loss, self.iterations)
        self.tb.log_value("lr", lr, self.iterations)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        if (i + 1) % self.config.log_step == 0 or i + 1 == n_batches:
            statistics = self.similarity_statistics()
            self.tb.log_values(statistics, self.iterations)
            self.logger.info("epoch %d [%d/%d] iter %d loss %.4f lr %.2e %.2f it/s%s",
                             epoch, i + 1, n_batches, self.iterations, loss, lr,
                             (i + 1) / max(time.time() - start, 1e-9),
                             "".join(f" {name} {value:.4g}" for name, value in statistics.items()))

    def similarity_statistics(self):
        """The similarity's own numbers (X-Dim: mask density, mean threshold, temperatures), or {}."""
        statistics = getattr(self.model.sim, "statistics", None)
        return statistics() if statistics else {}

    def run(self, start_epoch):
        for epoch in range(start_epoch, self.config.num_epochs):
            self.train_epoch(epoch)
            self.validate_and_save(epoch, end_of_epoch=True)
        return {"best_rsum": self.best_rsum, "losses": self.losses,
                "last_metrics": self.last_metrics, "iterations": self.iterations}


def build_model(model_config, bert_path, seed, device, amp):
    """A new XDimModel with the pretrained BERT at `bert_path`, on `device`, identical on every
    rank (seeded from `seed`)."""
    seed_everything(seed)
    return XDimModel(model_config, bert_path=bert_path, amp=amp).to(device)


def open_dev(config, caption_tokenizer, model_config):
    """The dev split (validation), checked whole before training: finite features, no empty caption
    (raw-image mode: every image file present)."""
    if model_config.uses_backbone:
        from lib.data.images import open_image_split
        dev_files = open_image_split(config.data_path, config.data_name, "dev", config.image_root or None)
        caption_tokenizer.check_captions(dev_files)
        return dev_files
    dev_files = precomp.open_split(config.data_path, config.data_name, "dev", img_dim=model_config.img_dim)
    precomp.check_split_finite(dev_files)
    caption_tokenizer.check_captions(dev_files)
    return dev_files


def write_run_configs(model_config, config, runtime):
    """{logger_name}/configs.json: the run's resolved configs (model, training, runtime), as the
    dataclasses hold them after the command line and its defaults were applied."""
    model = {k: v for k, v in model_config.as_dict().items() if k != "bert_config"}
    write_json(os.path.join(config.logger_name, CONFIGS), {
        "model": model, "training": config.as_dict(), "runtime": dataclasses.asdict(runtime)})


def log_run_start(logger, model_config, config, runtime, device, threads):
    logger.info("model: %s", {k: v for k, v in model_config.as_dict().items() if k != "bert_config"})
    logger.info("training: %s", config.as_dict())
    logger.info("device %s, amp %s, %d CPU threads", device, runtime.amp, threads)
    if distributed.world_size() > 1:
        logger.info("%d processes, %d captions per process and step", distributed.world_size(),
                    per_rank_batch(config.batch_size, distributed.world_size()))


def train(model_config, config, runtime, augment=True):
    """Train; -> {'best_rsum', 'losses' (per iteration), 'last_metrics', 'iterations'}.

    model_config: lib.model.config.ModelConfig (its `bert` is resolved here, once, by
    lib.model.bert.resolve_bert_path); config: lib.training.config.TrainConfig; runtime:
    lib.runtime.device.RuntimeConfig, its device already checked. Under torchrun every
    process runs this; all validate together, only rank 0 logs and writes checkpoints. Raises
    XDimError for bad input and for a non-finite loss (train.log is written only once the checks
    before work have passed), Interrupted on Ctrl-C.
    """
    device = distributed.init_from_env(runtime.torch_device())
    threads = runtime.apply_threads()
    per_rank_batch(config.batch_size, distributed.world_size())
    main = distributed.is_main()
    logger = setup_text_log(config.logger_name, main)
    tb = None
    try:
        with run_lock.training_lock((config.model_name, config.logger_name), logger):
            log_run_start(logger, model_config, config, runtime, device, threads)
            if main:
                for path in remove_stale_temp_files(config.model_name):
                    logger.info("removed %s, left by an interrupted save", path)
            state = read_resume(config, model_config.sim) if config.resume else None
            bert_path = resolve_bert_path(model_config.bert)
            caption_tokenizer = precomp.CaptionTokenizer(load_tokenizer(bert_path), bert_max_positions(bert_path))
            loader = make_train_loader(config, caption_tokenizer, model_config, augment)
            dev_files = open_dev(config, caption_tokenizer, model_config)
            model = build_model(model_config, bert_path, config.seed, device, runtime.amp)
            trainer = Trainer(model, config, loader, dev_files, caption_tokenizer, logger, tb=None)
            start_epoch = trainer.resume(state) if state else 0
            open_text_log(logger)
            if main:  # the start is accepted: the log folder now holds its files
                write_run_configs(model_config, config, runtime)
            trainer.tb = tb = TBLogger(config.logger_name, enabled=main)
            if state and not config.reset_start_epoch:
                trainer.repair_best(state)
            trainer.set_backbone_stage(start_epoch)
            trainer.wrap_for_processes()
            result = run_interruptible(trainer, start_epoch)
            logger.info("done: best rsum %.2f", result["best_rsum"])
            return result
    finally:
        if tb is not None:
            tb.close()
        close_text_log()


def run_interruptible(trainer, start_epoch):
    """trainer.run(start_epoch); Ctrl-C ends it with one line saying how to resume (exactly, from the
    last end-of-epoch checkpoint)."""
    try:
        return trainer.run(start_epoch)
    except KeyboardInterrupt:
        last = os.path.join(trainer.config.model_name, CHECKPOINT)
        where = f"interrupted at iteration {trainer.iterations}"
        if not distributed.is_main():  # only rank 0 writes checkpoints
            raise Interrupted(f"{where} (process 0 says how to resume)") from None
        if os.path.isfile(last):
            raise Interrupted(f"{where}; continue with the same command plus --resume {last} (it restarts "
                              f"from the end of the last finished epoch exactly)") from None
        raise Interrupted(f"{where}, before the first epoch ended: no checkpoint to resume from, "
                          f"start again") from None

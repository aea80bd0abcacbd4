"""The training loop: schedule, validation, checkpoints, resume, logs.

`train(opt)` runs a whole training from an options namespace
(lib.cli.options.get_argument_parser) in one process or, under torchrun, in each
of several processes (lib.runtime.distributed explains the gradient arithmetic).

Reproducibility: at the start of every epoch python's, numpy's and torch's
random generators are reseeded from (seed, epoch, rank), the shuffle is a
function of (seed, epoch) and the data augmentation of (seed, epoch, item).
So an epoch's randomness never depends on what ran before it, and resuming
from an end-of-epoch checkpoint (weights, optimizer state, epoch, best rSum,
iteration counter) continues exactly as the uninterrupted run would have.
"""
import logging
import os
import random
import time

import numpy as np
import torch
from tqdm import tqdm

from lib.runtime import distributed
from lib.model.bert import bert_max_positions, load_tokenizer, resolve_bert_path
from lib.formats.checkpoint import (copy_checkpoint, load_checkpoint, make_checkpoint, remove_stale_temp_files,
                            save_checkpoint, similarity_name)
from lib.data import precomp
from lib.errors import XDimError
from lib.cli.options import check_training_options
from lib.runtime.device import apply_threads
from lib.evaluation.scoring import validate
from lib.training.tb_logger import TBLogger
from lib.model.xdim_model import VSEModel

LOGGER_NAME = "xdim.train"
CHECKPOINT = "checkpoint.pth"
BEST = "model_best.pth"
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


def make_train_loader(opt, tokenizer, max_len, augment=True):
    """This process's training batches: a per-rank share of each global batch.

    Under torchrun each process reads its share of every epoch's shuffle; the
    shuffle depends only on (seed, epoch). `max_len`: the longest caption in tokens.
    `augment=False` turns region dropping and word perturbation off (used to compare
    runs exactly).
    """
    world = distributed.world_size()
    return precomp.train_loader(opt, tokenizer, batch_size=per_rank_batch(opt.batch_size, world),
                                max_len=max_len, augment=augment, num_replicas=world,
                                rank=distributed.rank())


def setup_text_log(folder, enabled):
    """The 'xdim.train' logger: train.log in `folder` plus the console (main rank only)."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = False
    logger.setLevel(logging.INFO if enabled else logging.WARNING)
    if enabled:
        os.makedirs(folder, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(folder, "train.log"), encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(file_handler)
        logger.addHandler(_TqdmHandler())
    return logger


class _TqdmHandler(logging.Handler):
    """Console lines that do not break tqdm's progress bars."""

    def emit(self, record):
        tqdm.write(self.format(record))


def close_text_log():
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


# ---------------------------------------------------------------- schedule

def lr_factor(opt, epoch):
    """All learning rates x0.1 from epoch `lr_update` on."""
    return 0.1 if epoch >= opt.lr_update else 1.0


def uses_max_violation(opt, epoch):
    """Hardest negatives after the warm-up epochs (or always with --max_violation)."""
    return bool(opt.max_violation) or epoch >= opt.vse_mean_warmup_epochs


def current_lr(model):
    return model.optimizer.param_groups[0]["lr"]


# ---------------------------------------------------------------- resume

def read_resume(opt):
    """The --resume checkpoint, read before anything is built.

    XDimError for a missing, corrupt or foreign file, and, unless --reset_start_epoch
    starts again from epoch 0, for one whose run already reached --num_epochs or that
    was trained with another --sim.
    """
    state = load_checkpoint(opt.resume)
    if not isinstance(state.get("model"), dict):
        raise XDimError(f"{opt.resume}: not a checkpoint of this codebase (official release files "
                        "hold no training state; evaluate them with eval.py)")
    trained_with = similarity_name(state)
    if trained_with != opt.sim and not opt.reset_start_epoch:
        raise XDimError(f"{opt.resume}: trained with --sim {trained_with}, not --sim {opt.sim} "
                        "(resume with the same --sim, or start anew with --reset_start_epoch)")
    epoch = state.get("epoch")
    if not opt.reset_start_epoch and isinstance(epoch, int) and epoch >= opt.num_epochs:
        raise XDimError(f"--num_epochs {opt.num_epochs}: {opt.resume} already finished epoch {epoch}; "
                        "ask for more epochs to continue it")
    return state


def resume(model, opt, state, logger):
    """Load a --resume checkpoint `state` into `model`; -> (start_epoch, best_rsum).

    Without --reset_start_epoch also the optimizer state, epoch, best rSum and
    iteration counter; with it only the weights (a fresh run from epoch 0).
    XDimError (one line) for a model of another shape.
    """
    model.load_state_dict(state["model"], opt.resume)
    if opt.reset_start_epoch:
        logger.info("loaded weights from %s; starting again from epoch 0", opt.resume)
        return 0, 0.0
    try:
        model.optimizer.load_state_dict(state["optimizer"])
        start_epoch, best_rsum = int(state["epoch"]), float(state["best_rsum"])
        model.Eiters = int(state["Eiters"])
    except (KeyError, ValueError, TypeError) as error:
        raise XDimError(f"{opt.resume}: cannot restore the training state ({error})") from None
    logger.info("resumed from %s: epoch %d, iteration %d, best rsum %.2f",
                opt.resume, start_epoch, model.Eiters, best_rsum)
    return start_epoch, best_rsum


# ---------------------------------------------------------------- the loop

class Trainer:
    """Holds what one training run shares between epochs (see `train`)."""

    def __init__(self, opt, model, loader, dev_files, caption_encoder, logger, tb):
        self.opt = opt
        self.model = model
        self.loader = loader
        self.dev_files = dev_files
        self.caption_encoder = caption_encoder
        self.logger = logger
        self.tb = tb
        self.best_rsum = 0.0
        self.losses = []
        self.last_metrics = None

    # ---- validation (every rank scores its share) and checkpoints (main rank only; the others wait)

    def validate(self, epoch):
        """Metrics on dev, scored by all ranks together; the main rank gets and logs them, the others None."""
        metrics = validate(self.model, self.dev_files, self.caption_encoder,
                           batch_size=self.opt.batch_size, workers=0, progress=True)
        if distributed.is_main():
            self.last_metrics = metrics
            for key, tag in METRIC_TAGS.items():
                self.tb.log_value(tag, metrics[key], self.model.Eiters)
            self.logger.info(
                "epoch %d iter %d: i2t R@1 %.2f R@5 %.2f R@10 %.2f medr %.1f meanr %.1f | "
                "t2i R@1 %.2f R@5 %.2f R@10 %.2f medr %.1f meanr %.1f | rsum %.2f",
                epoch, self.model.Eiters, *(metrics[k] for k in METRIC_TAGS))
        self.model.train_start()
        return metrics

    def save(self, next_epoch, metrics, end_of_epoch):
        """Write checkpoint.pth (end of epoch) and model_best.pth (when rSum improved)."""
        if not distributed.is_main():
            return
        is_best = metrics["rsum"] > self.best_rsum
        self.best_rsum = max(self.best_rsum, metrics["rsum"])
        os.makedirs(self.opt.model_name, exist_ok=True)
        state = make_checkpoint(self.model, next_epoch, self.best_rsum)
        last = os.path.join(self.opt.model_name, CHECKPOINT)
        best = os.path.join(self.opt.model_name, BEST)
        if end_of_epoch:
            save_checkpoint(state, last)
            if is_best:
                copy_checkpoint(last, best)
        elif is_best:
            save_checkpoint(state, best)
        if is_best:
            self.logger.info("new best rsum %.2f -> %s", self.best_rsum, best)

    def validate_and_save(self, epoch, end_of_epoch):
        metrics = self.validate(epoch)
        # A mid-epoch best restarts its epoch when resumed; an end-of-epoch one the next.
        self.save(epoch + 1 if end_of_epoch else epoch, metrics, end_of_epoch)
        distributed.barrier()

    # ---- one epoch

    def start_epoch(self, epoch):
        opt, model = self.opt, self.model
        seed_everything(opt.seed, epoch, distributed.rank())
        precomp.set_loader_epoch(self.loader, epoch)
        model.set_learning_rate_factor(lr_factor(opt, epoch))
        model.set_max_violation(uses_max_violation(opt, epoch))
        model.train_start()
        self.tb.log_value("epoch", epoch, model.Eiters)

    def train_epoch(self, epoch):
        """One pass over the training data, with mid-epoch validation every val_step."""
        opt, model = self.opt, self.model
        self.start_epoch(epoch)
        n_batches = len(self.loader)
        bar = tqdm(self.loader, desc=f"epoch {epoch}", total=n_batches,
                   disable=not distributed.is_main(), dynamic_ncols=True)
        start = time.time()
        images_path = self.loader.dataset.files.images_path
        for i, (images, image_lengths, captions, lengths, _, image_indices) in enumerate(bar):
            precomp.check_finite_images(images, image_indices, images_path)
            # train_emb raises XDimError on a non-finite loss, before touching the weights.
            loss = model.train_emb(images, captions, lengths, image_lengths)
            self.losses.append(loss)
            self.log_step(bar, epoch, i, n_batches, loss, start)
            if opt.val_step > 0 and model.Eiters % opt.val_step == 0 and i + 1 < n_batches:
                self.validate_and_save(epoch, end_of_epoch=False)
        bar.close()

    def log_step(self, bar, epoch, i, n_batches, loss, start):
        model = self.model
        lr = current_lr(model)
        self.tb.log_value("loss", loss, model.Eiters)
        self.tb.log_value("lr", lr, model.Eiters)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        if (i + 1) % self.opt.log_step == 0 or i + 1 == n_batches:
            statistics = self.similarity_statistics()
            self.tb.log_values(statistics, model.Eiters)
            self.logger.info("epoch %d [%d/%d] iter %d loss %.4f lr %.2e %.2f it/s%s",
                             epoch, i + 1, n_batches, model.Eiters, loss, lr,
                             (i + 1) / max(time.time() - start, 1e-9),
                             "".join(f" {name} {value:.4g}" for name, value in statistics.items()))

    def similarity_statistics(self):
        """The similarity's own numbers (X-Dim: mask density, mean threshold, temperatures), or {}."""
        statistics = getattr(self.model.modules()["sim"], "statistics", None)
        return statistics() if statistics else {}

    def run(self, start_epoch):
        for epoch in range(start_epoch, self.opt.num_epochs):
            self.train_epoch(epoch)
            self.validate_and_save(epoch, end_of_epoch=True)
        return {"best_rsum": self.best_rsum, "losses": self.losses,
                "last_metrics": self.last_metrics, "iterations": self.model.Eiters}


def build_model(opt, device=None, bert_path=None):
    """VSEModel on `device` with the BERT at `bert_path`, identical on every rank (seeded from opt.seed)."""
    seed_everything(opt.seed)
    return VSEModel(opt, device=device, bert_path=bert_path)


def open_dev(opt, caption_encoder):
    """The dev split (validation), checked whole before training: finite features, no empty caption."""
    dev_files = precomp.open_split(opt.data_path, opt.data_name, "dev", img_dim=opt.img_dim)
    precomp.check_split_finite(dev_files)
    caption_encoder.check_captions(dev_files)
    return dev_files


def train(opt, augment=True):
    """Train from options; -> {'best_rsum', 'losses' (per iteration), 'last_metrics', 'iterations'}.

    Checks the options first (lib.cli.options.check_training_options), then resolves
    the device, CPU threads and BERT once. Under torchrun every process runs this;
    all validate together, only rank 0 logs and writes checkpoints. Raises XDimError for bad
    input and for a non-finite loss.
    """
    device = distributed.init_from_env(check_training_options(opt))
    threads = apply_threads(opt.threads)
    per_rank = per_rank_batch(opt.batch_size, distributed.world_size())
    main = distributed.is_main()
    logger = setup_text_log(opt.logger_name, main)
    try:
        logger.info("options: %s", vars(opt))
        logger.info("device %s, %d CPU threads", device, threads)
        if distributed.world_size() > 1:
            logger.info("%d processes, %d captions per process and step", distributed.world_size(), per_rank)
        if main:
            for path in remove_stale_temp_files(opt.model_name):
                logger.info("removed %s, left by an interrupted save", path)
        state = read_resume(opt) if opt.resume else None
        bert_path = resolve_bert_path(opt.bert_path)
        tokenizer = load_tokenizer(bert_path)
        max_len = bert_max_positions(bert_path)
        loader = make_train_loader(opt, tokenizer, max_len, augment)
        caption_encoder = precomp.CaptionEncoder(tokenizer, max_len)
        dev_files = open_dev(opt, caption_encoder)
        model = build_model(opt, device, bert_path)
        start_epoch, best_rsum = resume(model, opt, state, logger) if state else (0, 0.0)
        distributed.wrap_encoders(model)
        trainer = Trainer(opt, model, loader, dev_files, caption_encoder, logger,
                          TBLogger(opt.logger_name, enabled=main))
        trainer.best_rsum = best_rsum
        result = trainer.run(start_epoch)
        logger.info("done: best rsum %.2f", result["best_rsum"])
        return result
    finally:
        close_text_log()

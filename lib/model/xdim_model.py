"""VSEModel: the encoders, the similarity (`--sim`), the loss and the optimizer, wired together.

Public API (outside scripts rely on these names):
`VSEModel(opt)`, `forward_emb`, `forward_sim`, `train_emb`, `VSEModel.from_checkpoint`.
"""
import contextlib

import torch
from torch.nn.utils import clip_grad_norm_

from lib.formats import checkpoint as ckpt_io
from lib.runtime import distributed
from lib.model.bert import BUNDLED_BERT_BASE, DEFAULT_BERT, bert_config_dict, bert_vocab, materialize_bert_dir
from lib.model.encoders import ImageEncoder, TextEncoder
from lib.errors import XDimError
from lib.model.loss import ContrastiveLoss
from lib.cli.options import default_options
from lib.runtime.device import resolve_device
from lib.model.similarity import DEFAULT_SIMILARITY, build_similarity, check_similarity_name

WEIGHT_DECAY = 1e-4
BERT_LR_FACTOR = 0.1


class VSEModel:
    """X-Dim: image encoder, BERT text encoder and a similarity (`opt.sim`), trained with the hinge loss.

    `opt` uses the official option names (lib.cli.options) and is never modified.
    `device`, `bert_path` and `amp` are what an entry point resolved once (lib.runtime.device,
    lib.model.bert.resolve_bert_path); left out, they are read from `opt` (`bert_path`
    defaults to bert-base-uncased). `bert_config` (a dict) builds BERT's architecture
    without pretrained weights, for loading a checkpoint; otherwise the pretrained BERT
    at `bert_path` is loaded.
    """

    def __init__(self, opt, bert_config=None, device=None, bert_path=None, amp=None):
        self.opt = opt
        self.device = resolve_device(device if device is not None else getattr(opt, "device", "auto"))
        self.bert_path = bert_path or getattr(opt, "bert_path", None) or DEFAULT_BERT
        self.amp = amp if amp is not None else getattr(opt, "amp", "none")
        self.img_enc = ImageEncoder(opt.img_dim, opt.embed_size, no_imgnorm=opt.no_imgnorm)
        self.txt_enc = TextEncoder(opt.embed_size, bert_path=self.bert_path, bert_config=bert_config,
                                   no_txtnorm=opt.no_txtnorm)
        self.sim = build_similarity(getattr(opt, "sim", DEFAULT_SIMILARITY), opt.embed_size)
        for module in self.modules().values():
            module.to(self.device)
        self.criterion = ContrastiveLoss(margin=opt.margin, max_violation=opt.max_violation)
        self.optimizer = self._build_optimizer()
        self.Eiters = 0

    def _build_optimizer(self):
        """AdamW: base lr for the image encoder, text projection and similarity; base x 0.1 for BERT."""
        lr = self.opt.learning_rate
        trainable = lambda module: [p for p in module.parameters() if p.requires_grad]
        groups = [
            {"name": "main", "params": trainable(self.img_enc) + trainable(self.txt_enc.proj) + trainable(self.sim),
             "lr": lr, "base_lr": lr},
            {"name": "bert", "params": trainable(self.txt_enc.bert),
             "lr": lr * BERT_LR_FACTOR, "base_lr": lr * BERT_LR_FACTOR},
        ]
        return torch.optim.AdamW(groups, lr=lr, weight_decay=WEIGHT_DECAY)

    # ----- parts and modes -------------------------------------------------
    def modules(self):
        """The three parts by name, unwrapped from DistributedDataParallel if wrapped."""
        parts = {"img_enc": self.img_enc, "txt_enc": self.txt_enc, "sim": self.sim}
        return {name: getattr(module, "module", module) for name, module in parts.items()}

    def parameters(self):
        return [p for module in self.modules().values() for p in module.parameters()]

    def train_start(self):
        for module in (self.img_enc, self.txt_enc, self.sim):
            module.train()

    def val_start(self):
        for module in (self.img_enc, self.txt_enc, self.sim):
            module.eval()

    def set_max_violation(self, max_violation):
        self.criterion.max_violation = bool(max_violation)

    def set_learning_rate_factor(self, factor):
        """Every group's lr becomes its base lr times `factor` (0.1 after lr_update)."""
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

    def autocast(self):
        """bf16 autocast on the model's device when amp == 'bf16', else a no-op."""
        if self.amp != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    # ----- forward ----------------------------------------------------------
    def encode_images(self, images, image_lengths=None):
        """images (n, R, img_dim) -> (n, R, d) float32 on model.device (image_lengths unused here)."""
        with self.autocast():
            return self.img_enc(images.to(self.device, non_blocking=True).float()).float()

    def encode_captions(self, captions, lengths=None):
        """captions (n, L) token ids, 0 = padding -> (n, L, d) float32 on model.device."""
        with self.autocast():
            return self.txt_enc(captions.to(self.device, non_blocking=True).long()).float()

    def forward_emb(self, images, captions, lengths, image_lengths=None):
        """-> (img_emb (n_img, R, d), cap_emb (n_cap, L, d), cap_lens (n_cap,) on model.device)."""
        cap_lens = torch.as_tensor(lengths, device=self.device).long()
        return self.encode_images(images, image_lengths), self.encode_captions(captions, cap_lens), cap_lens

    def forward_sim(self, img_emb, cap_emb, cap_lens, image_lengths=None):
        """-> (n_img, n_cap) float32 scores; `image_lengths` masks padded regions out of attention.

        Calling the similarity runs the block scheduler (lib/model/similarity/blocks.py).
        """
        with self.autocast():
            return self.sim(img_emb, cap_emb, cap_lens, image_lengths).float()

    def train_emb(self, images, captions, lengths, image_lengths=None):
        """One optimisation step on a batch of matching pairs; returns the loss (float).

        Under torchrun each process scores its own images against the captions of
        all processes and the score rows are gathered, so the loss sees the whole
        global batch's negatives. A non-finite loss raises XDimError before any
        weight changes.
        """
        self.Eiters += 1
        img_emb, cap_emb, cap_lens = self.forward_emb(images, captions, lengths, image_lengths)
        region_lens = None
        if self.opt.mask_padded_regions and image_lengths is not None:
            region_lens = torch.as_tensor(image_lengths, device=self.device).long()
        cap_emb, cap_lens = distributed.gather_captions(cap_emb, cap_lens)
        scores = distributed.gather_rows(self.forward_sim(img_emb, cap_emb, cap_lens, region_lens))
        loss = self.criterion(scores)
        if not torch.isfinite(loss):
            raise XDimError(f"loss is {loss.item()} at iteration {self.Eiters}: training stopped "
                            f"(the last saved checkpoint is intact; try a lower --learning_rate)")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.opt.grad_clip > 0:
            clip_grad_norm_(self.parameters(), self.opt.grad_clip)
        self.optimizer.step()
        return loss.item()

    # ----- state ------------------------------------------------------------
    def state_dict(self):
        """Flat weights dict: `img_enc.*`, `txt_enc.*`, `sim.*`.

        Without the buffers that only some transformers versions keep in BERT's state
        dict (checkpoint.LEGACY_BUFFERS), so a checkpoint is the same whichever
        version wrote it.
        """
        return {f"{name}.{key}": value
                for name, module in self.modules().items() for key, value in module.state_dict().items()
                if f"{name}.{key}" not in ckpt_io.LEGACY_BUFFERS}

    def load_state_dict(self, state, path="checkpoint"):
        """Load weights after checking every key and shape (XDimError names the first bad one).

        The legacy buffers are accepted whether `state` holds them or not; the model
        keeps its own values of them (fixed position indices).
        """
        expected = self.state_dict()
        ckpt_io.check_state_dict(state, expected, path)
        for name, module in self.modules().items():
            prefix = name + "."
            own = module.state_dict()
            loaded = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and k in expected}
            loaded.update({key: own[key] for key in own if prefix + key in ckpt_io.LEGACY_BUFFERS})
            module.load_state_dict(loaded)

    @property
    def bert_config(self):
        return self.modules()["txt_enc"].bert.config.to_dict()

    @classmethod
    def from_checkpoint(cls, path, bert_path=None, device=None, amp="none"):
        """Load our checkpoint or an official release checkpoint for evaluation.

        BERT's weights come from the checkpoint; its architecture and vocabulary from
        `bert_path` if given, else from our checkpoint itself, else (official files)
        from the bundled bert-base-uncased config and vocab. No network is needed.
        `device` (None: auto) and `amp` apply to this evaluation, whatever the
        checkpoint was trained with; `model.opt` holds the options it was saved with.
        """
        ckpt = ckpt_io.load_checkpoint(path)
        official = ckpt_io.is_official(ckpt)
        saved = ckpt_io.official_options(ckpt) if official else dict(ckpt.get("opt") or {})
        opt = default_options()
        for key, value in saved.items():
            setattr(opt, key, value)
        opt.sim = ckpt_io.similarity_name(ckpt)
        check_similarity_name(opt.sim, f"{path} (stored option sim)")
        if bert_path:
            config = bert_config_dict(bert_path)
        elif official:
            bert_path, config = BUNDLED_BERT_BASE, bert_config_dict(BUNDLED_BERT_BASE)
        else:
            config = ckpt["bert_config"]
            bert_path = materialize_bert_dir(config, ckpt["vocab"])
        model = cls(opt, bert_config=config, device=device or "auto", bert_path=bert_path, amp=amp)
        state = ckpt["model"]
        if official:
            state = ckpt_io.official_state_dict(state, model.state_dict(), path)
        model.load_state_dict(state, path)
        model.Eiters = int(ckpt.get("Eiters", 0) or 0)
        model.val_start()
        return model

    def vocab(self):
        """BERT's vocabulary (list of tokens by id), stored in checkpoints."""
        return bert_vocab(self.bert_path)

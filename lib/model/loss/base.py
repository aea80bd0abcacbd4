"""The base class of every loss: the contract of lib/model/loss/__init__.py as code."""
import torch.nn as nn


class Loss(nn.Module):
    """A training loss over a batch's (B, B) score matrix (diagonal: the matching pairs)."""

    @classmethod
    def from_config(cls, train_config):
        """The loss for the recipe `train_config` (lib.training.config.TrainConfig); default cls()."""
        return cls()

    def start_epoch(self, epoch):
        """Called at the start of every epoch (0-based); default nothing."""

    def forward(self, scores):
        """scores (B, B) -> scalar float32."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

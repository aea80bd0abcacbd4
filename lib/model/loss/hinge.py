"""Hinge triplet loss over a batch's score matrix (docs/method.md, "Training objective")."""
import torch

from lib.model.loss.base import Loss


class ContrastiveLoss(Loss):
    """Sum of margin violations, or only the hardest negatives (VSE++) when `max_violation`.

    The input is a (B, B) score matrix whose diagonal holds the matching pairs:
    row i is image i, column j caption j. The warm-up: `start_epoch` sums every
    violation for the first `warmup_epochs` epochs, then keeps the hardest negatives
    (from the start when built with max_violation=True).
    """

    def __init__(self, margin=0.2, max_violation=False, warmup_epochs=0):
        super().__init__()
        self.margin = margin
        self.max_violation = max_violation
        self.always_hardest = max_violation
        self.warmup_epochs = warmup_epochs

    @classmethod
    def from_config(cls, train_config):
        return cls(train_config.margin, train_config.max_violation, train_config.vse_mean_warmup_epochs)

    def start_epoch(self, epoch):
        """Hardest negatives after the warm-up epochs (or always with max_violation)."""
        self.max_violation = bool(self.always_hardest) or epoch >= self.warmup_epochs

    def forward(self, scores):
        """scores (B, B) -> scalar loss (float32)."""
        scores = scores.float()
        positives = scores.diag()
        # cost_captions[i, j]: image i ranks the wrong caption j above its own.
        cost_captions = (self.margin + scores - positives.view(-1, 1)).clamp(min=0)
        # cost_images[i, j]: caption j ranks the wrong image i above its own.
        cost_images = (self.margin + scores - positives.view(1, -1)).clamp(min=0)
        off_diagonal = ~torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
        cost_captions = cost_captions * off_diagonal
        cost_images = cost_images * off_diagonal
        if self.max_violation:
            return cost_captions.max(dim=1).values.sum() + cost_images.max(dim=0).values.sum()
        return cost_captions.sum() + cost_images.sum()

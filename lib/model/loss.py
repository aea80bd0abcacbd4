"""Hinge triplet loss over a batch's score matrix (docs/method.md, "Training objective")."""
import torch
import torch.nn as nn


class ContrastiveLoss(nn.Module):
    """Sum of margin violations, or only the hardest negatives (VSE++) when `max_violation`.

    The input is a (B, B) score matrix whose diagonal holds the matching pairs:
    row i is image i, column j caption j.
    """

    def __init__(self, margin=0.2, max_violation=False):
        super().__init__()
        self.margin = margin
        self.max_violation = max_violation

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

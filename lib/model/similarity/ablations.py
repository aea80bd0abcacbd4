"""X-Dim with one equation changed, for the ablations (docs/method.md, "Variants").

Each class overrides only the method holding the equation it changes; the fast kernel,
the parameter names (so checkpoints map) and the block layout stay X-Dim's. Parameters
a variant does not use or does not learn are kept but frozen (requires_grad False):
the optimizer leaves them out and checkpoints still store them.
"""
import torch

from lib.model.encoders import l2norm
from lib.model.similarity.xdim import EPS, XDimSimilarity


def freeze(*parameters):
    for parameter in parameters:
        parameter.requires_grad_(False)


class XDimNoMask(XDimSimilarity):
    """No sparse mask: W = row-l2n(P), every dependency kept (lam and t_mask unused, frozen)."""

    def __init__(self, embed_size):
        super().__init__(embed_size)
        freeze(self.lam, self.log_t_mask)

    def dependency_weights(self):
        with torch.autocast(self.E.device.type, enabled=False):
            W = l2norm(torch.sigmoid(self.E), dim=1, eps=EPS)
        return W, W.sum(dim=0)

    @torch.no_grad()
    def statistics(self):
        """Only the attention temperature: this variant has no mask."""
        return {"t_attn": self.log_t_attn.exp().item()}


class XDimFixedThreshold(XDimSimilarity):
    """The mask's threshold scales lam and temperature t_mask stay at their initial values."""

    def __init__(self, embed_size):
        super().__init__(embed_size)
        freeze(self.lam, self.log_t_mask)


class XDimNoDelta(XDimSimilarity):
    """Step 1 without the dimension weights: a = tanh(w . v); W acts in step 5 only."""

    def prepare(self):
        return super().prepare()._replace(delta=None)

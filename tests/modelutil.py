"""Small models the tests build by hand."""
import torch
from torch import nn


class FlattenNet(nn.Module):
    """conv -> ReLU -> flatten -> linear; ``flatten`` is ``view`` (fails on channels-last features) or ``reshape``."""

    def __init__(self, flatten: str):
        super().__init__()
        with torch.random.fork_rng():  # the same weights for every flatten, without touching the global generator
            torch.manual_seed(0)
            self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 16 * 16, 3)
        self.flatten = flatten

    def forward(self, x):
        h = torch.relu(self.conv(x))
        if self.flatten == "broken":
            raise RuntimeError("this model is broken whatever the layout")
        return self.fc(h.view(h.size(0), -1) if self.flatten == "view" else h.reshape(h.size(0), -1))

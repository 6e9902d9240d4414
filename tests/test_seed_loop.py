"""The training loop of the project's seed document, as written there, runs on our model and learns.

The seed wraps ``PSPNet(num_classes=21)`` in its own ``nn.Module``, then trains it with
``nn.CrossEntropyLoss`` and Adam over a DataLoader, calling ``model(inputs)`` in train mode. That
needs ``model(x)`` to return one logits tensor in train mode too (the aux head is asked for with
``return_aux=True``); ``PSPNetLoss`` gives the paper's loss for loops that want the aux term.
"""

from __future__ import annotations

import torch
from torch import nn, optim
from torch.utils.data import DataLoader, TensorDataset

from pspnet.engine.losses import PSPNetLoss
from pspnet.pspnet import PSPNet


class PSPNetModel(nn.Module):
    def __init__(self, num_classes: int = 21):
        super().__init__()
        self.model = PSPNet(num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def batches() -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(2, 3, 65, 65, generator=gen)
    targets = torch.zeros(2, 65, 65, dtype=torch.long)  # a scene: class 15 on the left, 7 on the right
    targets[:, :, :32], targets[:, :, 32:] = 15, 7
    return DataLoader(TensorDataset(inputs, targets), batch_size=2)


def test_the_seed_training_loop_runs_and_the_loss_falls():
    torch.manual_seed(0)
    model = PSPNetModel(num_classes=21)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(6):
        for inputs, targets in batches():
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = criterion(outputs, targets)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert outputs.shape == (2, 21, 65, 65)
    assert losses[-1] < 0.8 * losses[0], losses


def test_pspnet_loss_adds_the_aux_head_with_weight_0_4():
    torch.manual_seed(0)
    model = PSPNet(num_classes=5, layers=18).train()
    x, y = torch.randn(2, 3, 33, 33), torch.randint(0, 5, (2, 33, 33))
    logits, aux = model(x, return_aux=True)
    ce = nn.CrossEntropyLoss(ignore_index=255)
    expected = ce(logits, y) + 0.4 * ce(aux, y)
    torch.testing.assert_close(PSPNetLoss()((logits, aux), y), expected)
    torch.testing.assert_close(PSPNetLoss()(logits, y), ce(logits, y))  # plain logits: no aux term
    assert model(x).shape == (2, 5, 33, 33)  # one tensor in train mode

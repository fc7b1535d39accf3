"""The seed notebook's network and training loop, copied as they are written there: oracles for the seed recipe.

(The notebook's `F.log_softmax(x)` chose dim=1 for 2-D inputs by itself in torch 0.3; it is spelled out
here. Its `.cuda()` calls and `Variable` wrappers are gone: they do nothing today.)
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(1, 150, 5, stride=1, padding=2)
        self.conv2 = nn.Conv2d(150, 64, 5, stride=1, padding=2)
        self.fc1 = nn.Linear(64*7*7, 1024)
        self.fc2 = nn.Linear(1024, 500)
        self.fc3 = nn.Linear(500, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(-1, 64*7*7)
        x = F.relu(self.fc1(x))
        x = F.dropout(x, training=self.training)
        x = F.relu(self.fc2(x))
        x = F.dropout(x, training=self.training)
        x = self.fc3(x)
        return F.log_softmax(x, dim=1)


batch_size = 50  # In [3]


def notebook_training(net: Net, epoch_loaders) -> None:
    """In [6] and In [7]: `epoch_loaders()` yields, for each of the 3 epochs, that epoch's (data, target) batches."""
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(net.parameters(), lr=1e-2, momentum=0.95)
    for epoch, train_loader in zip(range(3), epoch_loaders()):
        for data, target in train_loader:
            optimizer.zero_grad()
            outputs = net(data)
            loss = criterion(outputs, target)
            loss.backward()
            optimizer.step()

"""`ppllava train` with infinite gradients in chosen optimizer steps, the losses themselves unchanged, as an
overflowing backward pass gives them (run by test_train.py):

    python tests/train_inject.py STEPS train [ppllava train arguments...]

STEPS: comma-separated optimizer steps (from 1) whose micro-batches backpropagate inf. DeepSpeed's own
overflow check sees them and skips the optimizer step; the rest is the CLI's (exit status included).
"""

import sys

import torch

from ppllava.cli import main
from ppllava.train.trainer import Trainer

STEPS = {int(s) for s in sys.argv[1].split(",")}


class InfiniteGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


_loss = Trainer._loss


def _injected(self, batch):
    loss = _loss(self, batch)
    return InfiniteGradient.apply(loss) if self.step + 1 in STEPS else loss


Trainer._loss = _injected
sys.exit(main(sys.argv[2:]))

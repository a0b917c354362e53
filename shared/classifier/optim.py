"""AdamW without ``torch.optim``: the first use of any ``torch.optim`` optimizer imports
``torch._dynamo`` (1.5-3 s on 2 busy cores, measured with torch 2.13), which a federation node
would pay on every train message, since each message runs in a fresh process.

:class:`AdamW` is ``torch.optim.AdamW``'s single-tensor update (the one torch uses on CPU)
written out, so a training run gives the same weights bit for bit
(``tests/test_classifier_networks.py`` checks it against ``torch.optim.AdamW``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class AdamW:
    """Decoupled weight decay Adam over ``params`` (no amsgrad, no maximize)."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = list(params)
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        # per parameter: steps taken, first and second moment estimates
        self.state: dict[int, tuple[list[int], torch.Tensor, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        lr, eps = self.lr, self.eps
        for p in self.params:
            if p.grad is None:
                continue
            if id(p) not in self.state:
                zeros = (torch.zeros_like(p, memory_format=torch.preserve_format) for _ in "mv")
                self.state[id(p)] = ([0], *zeros)
            count, exp_avg, exp_avg_sq = self.state[id(p)]
            count[0] += 1
            step = float(count[0])
            grad = p.grad
            p.mul_(1 - lr * self.weight_decay)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            bias_correction1 = 1 - beta1**step
            bias_correction2 = 1 - beta2**step
            step_size = lr / bias_correction1
            denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(eps)
            p.addcdiv_(exp_avg, denom, value=-step_size)

"""AdamW without ``torch.optim``: the first use of any ``torch.optim`` optimizer imports
``torch._dynamo`` (1.5-3 s on 2 busy cores, measured with torch 2.13), which a federation node
would pay on every train message, since each message runs in a fresh process.

:class:`AdamW` is ``torch.optim.AdamW(fused=True)``'s update written out: one call of the fused
aten kernel per device and dtype, so a training run gives the same weights bit for bit
(``tests/test_classifier_networks.py`` checks it against ``torch.optim.AdamW(fused=True)``).
Fused rather than the default single-tensor update: on the CPU the small classifier's step took
1.6 ms single-tensor against 0.35 ms fused (21 tensors, 0.58 M parameters, one core), a
twentieth of a training step.
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
        # per parameter: steps taken (a float32 tensor, as the fused kernel reads it), first
        # and second moment estimates
        self.state: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        groups: dict[tuple[torch.device, torch.dtype], list[list[torch.Tensor]]] = {}
        for p in self.params:
            if p.grad is None:
                continue
            if id(p) not in self.state:
                self.state[id(p)] = (
                    torch.zeros((), dtype=torch.float32, device=p.device),
                    torch.zeros_like(p, memory_format=torch.preserve_format),
                    torch.zeros_like(p, memory_format=torch.preserve_format),
                )
            count, exp_avg, exp_avg_sq = self.state[id(p)]
            lists = groups.setdefault((p.device, p.dtype), [[], [], [], [], []])
            for lst, t in zip(lists, (p, p.grad, exp_avg, exp_avg_sq, count), strict=True):
                lst.append(t)
        beta1, beta2 = self.betas
        for params, grads, exp_avgs, exp_avg_sqs, steps in groups.values():
            torch._foreach_add_(steps, 1)
            torch._fused_adamw_(
                params, grads, exp_avgs, exp_avg_sqs, [], steps,
                lr=self.lr, beta1=beta1, beta2=beta2, weight_decay=self.weight_decay,
                eps=self.eps, amsgrad=False, maximize=False,
            )  # fmt: skip

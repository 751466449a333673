"""Measure a step of your own training loop with ``flopsweep.meter``: a small transformer language model
trained for a few steps on synthetic tokens; step K is counted (FLOPs, sizes, module profile), the steps after
it are timed, and the record is printed (and logged to MLflow with --log).

    .venv/bin/python examples/train_loop.py [--steps 12] [--profile-step 4] [--log]
"""

from __future__ import annotations

import argparse
import contextlib

import torch
from torch import nn

import flopsweep
from flopsweep.core.text import metric_lines, profile_text, spread_warning


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 1000, d: int = 128, heads: int = 4, layers: int = 2, seq_len: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(seq_len, d))
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq_len), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        return self.head(self.encoder(x, mask=self.mask, is_causal=True))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--profile-step", type=int, default=4, help="the step to count (later ones are timed)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--log", action="store_true", help="log the record to MLflow (experiment train-loop)")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = TinyLM(seq_len=args.seq_len)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    meter = flopsweep.meter(model, optimizer, batch_size=args.batch, seq_len=args.seq_len, name="tiny_lm")
    for step in range(args.steps):
        tokens = torch.randint(0, 1000, (args.batch, args.seq_len + 1))
        with meter if step >= args.profile_step else contextlib.nullcontext():
            logits = model(tokens[:, :-1])
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        print(f"step {step}: loss {loss.item():.3f}")

    result = meter.result()
    print("\n".join(metric_lines(result.metrics)))
    noisy = spread_warning(result)  # as the flopsweep command says it of a job whose timing is noisy
    if noisy:
        print(f"warning: {noisy}")
    print()
    print(profile_text(result.breakdown["profile"], "tiny_lm, step " + str(args.profile_step)), end="")
    if args.log:
        print(f"logged: run {meter.log(experiment='train-loop')}")


if __name__ == "__main__":
    main()

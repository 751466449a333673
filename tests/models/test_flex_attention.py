"""FlexAttention counted as the fused kernel it is on a GPU: the pairs of the tiles its block mask computes, forward
and backward, the same on ``meta`` and on the CPU (where PyTorch's front end refuses both a backward and ``meta``;
flopsweep runs its reference kernel unseen while counting). Closed forms: 128-token tiles, 4 (query, key) products a
pair and a head dimension (QK^T and PV), twice that backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from flopsweep.measure.count import count_step
from tests.models.test_hf import HF_LLAMA, measured

B, H, D = 2, 4, 16


def causal(b, h, q, kv):
    return q >= kv


class Flex(nn.Module):
    """A projection, then flex_attention over its output with the block mask ``mask`` makes on the input's device."""

    def __init__(self, mask=None, documents=None):
        super().__init__()
        self.proj = nn.Linear(H * D, H * D, bias=False)
        self.mask, self.documents = mask, documents

    def forward(self, x):
        batch, seq = x.shape[:2]
        q = self.proj(x).view(batch, seq, H, D).transpose(1, 2)
        block = None
        if self.mask == "causal":
            block = create_block_mask(causal, None, None, seq, seq, device=x.device)
        elif self.mask == "documents":
            ids = torch.arange(seq, device=x.device) // 64  # documents of 64 tokens, packed

            def same_document(b, h, q, kv):
                return (ids[q] == ids[kv]) & (q >= kv)
            block = create_block_mask(same_document, None, None, seq, seq, device=x.device)
        return flex_attention(q, q, q, block_mask=block).sum()


def attention_flops(mask, seq, device):
    torch.manual_seed(0)
    model = Flex(mask).to(device)
    count = count_step(model, {"x": torch.randn(B, seq, H * D, device=device)}, None)
    projection = 2 * B * seq * (H * D) ** 2  # the linear layer's forward
    forward = count.forward.by_op["higher_order.flex_attention"].matmul
    backward = count.backward.by_op["higher_order.flex_attention_backward"].matmul
    assert count.forward.matmul == projection + forward
    return forward, backward, count.uncounted


@pytest.mark.parametrize("device,mask,seq,pairs", [
    *[(device, None, 256, 256 * 256) for device in ("cpu", "meta")],  # no mask: one tile over everything
    *[(device, "causal", 256, 3 * 128 * 128) for device in ("cpu", "meta")],  # tiles (0,0), (1,0), (1,1)
    *[(device, "causal", 200, 128 * 128 + 72 * 200) for device in ("cpu", "meta")],  # a last tile of 72 rows
    ("cpu", "documents", 256, 2 * 128 * 128),  # 64-token documents: a query tile sees only its own, diagonal, tile
])
def test_flex_attention_counts_the_pairs_of_the_tiles_its_block_mask_computes(device, mask, seq, pairs):
    forward, backward, uncounted = attention_flops(mask, seq, device)
    assert forward == 4 * B * H * pairs * D
    assert backward == 2 * forward
    assert not uncounted, uncounted


def test_a_meta_block_mask_that_reads_meta_tensors_is_counted_dense_and_said():
    """The documents' mask_mod indexes token ids made on meta: it cannot be evaluated on the CPU, so every pair is
    counted (the upper bound), and the count says so rather than guessing."""
    forward, _, uncounted = attention_flops("documents", 256, "meta")
    assert forward == 4 * B * H * 256 * 256 * D
    assert any("counted dense" in what for what in uncounted), uncounted


def test_flex_attention_is_refused_by_pytorch_again_once_a_count_ends():
    attention_flops("causal", 256, "meta")
    q = torch.randn(1, 1, 128, 16, device="meta")
    with pytest.raises(ValueError, match="Found input tensors on meta"):
        flex_attention(q, q, q)


def test_another_higher_order_op_is_refused_in_one_line_not_miscounted():
    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Linear(4, 4)

        def forward(self, x):
            return torch.cond(x.sum() > 0, lambda t: self.w(t), lambda t: t * 2, (x,)).sum()

    with pytest.raises(NotImplementedError, match="higher-order op cond is not counted"):
        count_step(Branches(), {"x": torch.randn(2, 4)}, None)


def test_a_hugging_face_decoder_with_flex_attention_saves_the_tiles_its_causal_mask_skips():
    """Issue 31: ``model.attn_implementation=flex_attention`` (was refused). Two layers, 4 heads of 16, batch 2 of 256
    tokens: SDPA counts every pair, FlexAttention 3 of 4 tiles; everything else is the same model."""
    common = (*HF_LLAMA, "batch.seq_len=256", "batch.size=2")
    sdpa, flex = measured(*common), measured(*common, "+model.attn_implementation=flex_attention")
    skipped = 2 * 4 * B * H * 128 * 128 * D  # a quarter of the tiles, two layers
    assert sdpa.metrics["flops/forward"] - flex.metrics["flops/forward"] == skipped
    assert sdpa.metrics["flops/backward"] - flex.metrics["flops/backward"] == 2 * skipped

"""A GPT-style LM that probe's own model zoo does not contain, for tests on an "unseen" transformer.

Built unlike the zoo's GPT wherever a user's LM commonly differs: separate bias-free q, k, v
projections (no fused qkv Linear and Split), 3 heads of 16, F.scaled_dot_product_attention
with is_causal=True, LayerNorm without bias, tanh-approximated GELU, a bias-free MLP, and the
output layer tied to the token embedding. Data: the Shakespeare character windows (vocab 84,
T = 32). `models/reference.py hidden-lm` exports it and trains a checkpoint;
`reference.py eval/grad --model models/hidden_lm.py` evaluates it (this file defines `build()`).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB, T, D, HEADS, LAYERS = 84, 32, 48, 3, 2


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = nn.LayerNorm(D, bias=False)
        self.q = nn.Linear(D, D, bias=False)
        self.k = nn.Linear(D, D, bias=False)
        self.v = nn.Linear(D, D, bias=False)
        self.o = nn.Linear(D, D)
        self.ln2 = nn.LayerNorm(D, bias=False)
        self.up = nn.Linear(D, 3 * D, bias=False)
        self.down = nn.Linear(3 * D, D, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        h = self.ln1(x)
        q, k, v = (p(h).view(b, t, HEADS, d // HEADS).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        return x + self.down(F.gelu(self.up(self.ln2(x)), approximate="tanh"))


class HiddenLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, D)
        self.pos = nn.Parameter(torch.randn(T, D) * 0.02)
        self.blocks = nn.ModuleList([Block() for _ in range(LAYERS)])
        self.ln_f = nn.LayerNorm(D, bias=False)

    def forward(self, x):
        h = self.tok(x) + self.pos[: x.shape[1]]
        for blk in self.blocks:
            h = blk(h)
        return self.ln_f(h) @ self.tok.weight.t()


def build(seed=0):
    """Fixed initial weights, eval mode."""
    torch.manual_seed(seed)
    return HiddenLM().eval()


def example_input(n=2):
    return torch.randint(0, VOCAB, (n, T))

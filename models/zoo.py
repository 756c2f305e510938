"""The three models probe ships with (mlp, resnet, gpt), defined once.

Both `export.py` (which writes the committed ONNX files) and `reference.py` (the PyTorch
reference the Rust tests compare against) import this module, so the state-dict names, which are
the ONNX initializer names, cannot drift between the two.

Every submodule has an explicit attribute name (no bare nn.Sequential indices) so checkpoint keys
read like ordinary PyTorch ones: `fc1.weight`, `layer2.0.bn1.running_mean`, `blocks.1.attn.qkv.weight`.
"""
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB_PATH = os.path.join(ROOT, "data", "shakespeare_vocab.json")

NAMES = ("mlp", "resnet", "gpt", "resnet101")
GPT_BLOCK = 32  # T: the GPT's context length, fixed in its ONNX graph


def load_vocab(path=VOCAB_PATH):
    """The Shakespeare character vocabulary: a JSON array of 1-char strings, id = index."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# --- mlp --------------------------------------------------------------------------------------
class MLP(nn.Module):
    """784-128-64-10 with ReLU then Tanh: two different activations for the gradient builder."""

    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(784, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x):
        x = self.flatten(x)
        x = F.relu(self.fc1(x))
        x = torch.tanh(self.fc2(x))
        return self.fc3(x)


# --- resnet -----------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """Two 3x3 conv+BN; a 1x1 strided conv+BN shortcut when the shape changes (torchvision style)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        idt = x if self.downsample is None else self.downsample(x)
        return F.relu(out + idt)


class SmallResNet(nn.Module):
    """A ~78k-parameter ResNet for 28x28x1: stem 16, stages 16/32/64 (one block each), GAP, fc."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = nn.Sequential(BasicBlock(16, 16, 1))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, 2))
        self.layer3 = nn.Sequential(BasicBlock(32, 64, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


# --- gpt --------------------------------------------------------------------------------------
class CausalSelfAttention(nn.Module):
    """Written the way PyTorch users write it (qkv split, view/transpose, SDPA is_causal)."""

    def __init__(self, d, heads):
        super().__init__()
        self.d, self.h = d, heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=-1)
        q = q.view(B, T, self.h, D // self.h).transpose(1, 2)
        k = k.view(B, T, self.h, D // self.h).transpose(1, 2)
        v = v.view(B, T, self.h, D // self.h).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, D)
        return self.proj(y)


class MLPBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, 4 * d)
        self.proj = nn.Linear(4 * d, d)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, d, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, heads)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = MLPBlock(d)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Character-level GPT: int64 ids [N, T] -> logits [N, T, V]."""

    def __init__(self, vocab, block=GPT_BLOCK, d=64, layers=2, heads=4):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, d)
        self.pos_emb = nn.Embedding(block, d)
        self.blocks = nn.ModuleList([Block(d, heads) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab)

    def forward(self, x):
        T = x.shape[1]
        pos = torch.arange(T, device=x.device)
        h = self.tok_emb(x) + self.pos_emb(pos)
        for b in self.blocks:
            h = b(h)
        return self.lm_head(self.ln_f(h))


# --- construction -----------------------------------------------------------------------------
def build(name, seed=0):
    """The model `name` with fixed initial weights (torch.manual_seed(seed)), in eval mode."""
    torch.manual_seed(seed)
    if name == "mlp":
        m = MLP()
    elif name == "resnet":
        m = SmallResNet()
    elif name == "gpt":
        m = GPT(len(load_vocab()))
    elif name == "resnet101":
        import torchvision  # only this model needs it

        m = torchvision.models.resnet101(weights=None)
    else:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(NAMES)}")
    return m.eval()


def example_input(name, n=2):
    """A dummy input for tracing: float images, or int64 token ids for the GPT."""
    if name == "gpt":
        return torch.zeros(n, GPT_BLOCK, dtype=torch.int64)
    if name == "resnet101":
        return torch.randn(n, 3, 224, 224)
    return torch.randn(n, 1, 28, 28)

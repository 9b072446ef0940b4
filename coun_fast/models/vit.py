"""The small-data Vision Transformer of the CoUn paper (Lee, Lee & Song 2021, "Vision Transformer
for Small-Size Datasets"): a ViT with Shifted Patch Tokenization (SPT) and Locality Self-Attention
(LSA), at the paper's size: 4x4 patches, width 512, depth 6, 12 heads of 64, MLP hidden 1024,
dropout 0.1, embedding dropout 0.1.

* SPT (:class:`ShiftedPatchTokenizer`): the image is concatenated along channels with four shifted
  copies of itself (zeros where a shift uncovers pixels), cut into non-overlapping patches, each
  flattened patch (``patch_size**2 * 5 * in_chans`` values, ordered row, column, channel) is
  LayerNorm-ed and projected by a Linear layer to ``dim``. ``spt_style="diagonal"`` (default) shifts
  by half a patch along the four diagonals, as Lee et al. describe; ``"axis"`` shifts by one pixel
  left, right, up and down, as a widely used re-implementation does.
* LSA (:class:`LocalitySelfAttention`): pre-norm multi-head attention whose softmax temperature is
  learned (the logit scale is ``exp(t)``, ``t`` initialised at ``log(dim_head ** -0.5)``) and whose
  diagonal is masked out, so no token attends to itself.
* A learned CLS token is prepended, a learned position embedding added; ``forward_features`` returns
  the CLS token's final state (B, dim) and ``forward_head`` is ``LayerNorm(dim)`` + ``Linear``.

Parameter order (what the NoT baseline's indices refer to): ``parameters()`` yields
``pos_embedding`` (index 0), ``cls_token`` (1), ``patch_embed.norm.weight`` (2), ``.bias`` (3),
``patch_embed.proj.weight`` (4): NoT negates indices 0 and 4. ``first_layer()`` returns
``patch_embed.proj``, the projection NoT negates (the LayerNorm before it carries no learned map of
the image).

FLOPs per 32x32 image: 2.138 G for 100 classes (the transformer blocks 2.123 G, SPT 0.016 G). The
paper's figures imply 3.534 G if its ViT Retrain ran 182 epochs like the CNNs; they imply 2.144 G
(this model plus ~0.3% of uncounted LayerNorm, softmax and GELU work) if Retrain ran 300 epochs, which
also makes every ViT unlearning cost a whole number of epochs (CoUn 50, FT 20 at 10%).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coun_fast.models.base import ImageClassifier, check_num_classes, check_positive_int, check_probability, is_meta

SPT_STYLES = ("diagonal", "axis")


def truncated_normal_(tensor: Tensor, std: float, bound: float = 2.0) -> Tensor:
    """Fill ``tensor`` in place with Normal(0, std) restricted to [-bound * std, bound * std].

    Inverse-CDF sampling: if u is uniform on (erf(-bound/sqrt 2), erf(bound/sqrt 2)), then
    sqrt(2) * erfinv(u) is a standard normal truncated to [-bound, bound]. One pass, no rejection loop.
    """
    edge = math.erf(bound / math.sqrt(2.0))
    with torch.no_grad():
        return tensor.uniform_(-edge, edge).erfinv_().mul_(std * math.sqrt(2.0)).clamp_(-bound * std, bound * std)


def _spt_offsets(style: str, patch_size: int) -> tuple[tuple[int, int], ...]:
    """(dy, dx) content shifts of the four extra SPT copies."""
    if style == "diagonal":
        s = max(patch_size // 2, 1)
        return ((-s, -s), (-s, s), (s, -s), (s, s))
    return ((0, 1), (0, -1), (1, 0), (-1, 0))


class ShiftedPatchTokenizer(nn.Module):
    """SPT: (B, C, H, W) -> (B, (H/p)(W/p), dim). See the module docstring for the layout."""

    def __init__(self, in_chans: int, patch_size: int, dim: int, style: str = "diagonal") -> None:
        super().__init__()
        if style not in SPT_STYLES:
            raise ValueError(f"spt_style must be one of {', '.join(map(repr, SPT_STYLES))}; got {style!r}")
        self.patch_size = patch_size
        self.style = style
        self.offsets = _spt_offsets(style, patch_size)
        self.margin = max(max(abs(dy), abs(dx)) for dy, dx in self.offsets)
        patch_dim = patch_size * patch_size * in_chans * (1 + len(self.offsets))
        self.norm = nn.LayerNorm(patch_dim)
        self.proj = nn.Linear(patch_dim, dim)

    def shifted_stack(self, x: Tensor) -> Tensor:
        """x and its four shifted copies, concatenated along channels: (B, 5C, H, W).

        A copy shifted by (dy, dx) holds ``x[i - dy, j - dx]`` at (i, j), zero outside the image.
        """
        m, (height, width) = self.margin, x.shape[-2:]
        padded = F.pad(x, (m, m, m, m))
        copies = [x] + [padded[..., m - dy:m - dy + height, m - dx:m - dx + width] for dy, dx in self.offsets]
        return torch.cat(copies, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        stacked = self.shifted_stack(x)
        b, c, h, w = stacked.shape
        p = self.patch_size
        patches = stacked.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)
        return self.proj(self.norm(patches))


class LocalitySelfAttention(nn.Module):
    """Pre-norm multi-head self-attention with a learned temperature and the diagonal masked out.

    (B, N, dim) -> (B, N, dim), the residual branch only (the caller adds it). Runs on
    ``F.scaled_dot_product_attention`` (queries pre-scaled by ``exp(temperature)``, scale 1), so
    GPUs use a fused kernel.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = heads * dim_head
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.temperature = nn.Parameter(torch.tensor(math.log(dim_head ** -0.5)))
        self.attn_drop = dropout
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4).unbind(0)
        not_self = ~torch.eye(n, dtype=torch.bool, device=x.device)
        out = F.scaled_dot_product_attention(q * self.temperature.exp(), k, v, attn_mask=not_self,
                                             dropout_p=self.attn_drop if self.training else 0.0, scale=1.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head)))


class FeedForward(nn.Module):
    """Pre-norm MLP branch: LayerNorm, Linear(dim, hidden), GELU, dropout, Linear(hidden, dim), dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Block(nn.Module):
    """One transformer layer: ``x + attn(x)``, then ``x + mlp(x)``."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.attn = LocalitySelfAttention(dim, heads, dim_head, dropout)
        self.mlp = FeedForward(dim, mlp_dim, dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class SmallDataViT(ImageClassifier):
    """ViT with SPT and LSA for small images. ``forward_features``: (B, in_chans, img_size, img_size) -> (B, dim).

    Args:
        num_classes: an int >= 2.
        in_chans: input channels (3 for RGB).
        img_size: the (square) image side the position embedding is made for; inputs must have it.
        patch_size: the patch side; must divide ``img_size``.
        dim: token width (``num_features``).
        depth: number of transformer layers.
        heads, dim_head: attention heads and their width (inner width ``heads * dim_head`` may differ from ``dim``).
        mlp_dim: hidden width of the MLPs.
        dropout: dropout inside attention (weights and output) and MLPs, in [0, 1).
        emb_dropout: dropout on the token embeddings, in [0, 1).
        spt_style: "diagonal" (half-patch diagonal shifts, Lee et al.) or "axis" (one-pixel axis shifts).
    """

    def __init__(self, num_classes: int, in_chans: int = 3, img_size: int = 32, patch_size: int = 4, dim: int = 512,
                 depth: int = 6, heads: int = 12, dim_head: int = 64, mlp_dim: int = 1024, dropout: float = 0.1,
                 emb_dropout: float = 0.1, spt_style: str = "diagonal") -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        self.in_chans = check_positive_int(in_chans, "in_chans")
        self.img_size = check_positive_int(img_size, "img_size")
        self.patch_size = check_positive_int(patch_size, "patch_size")
        if self.img_size % self.patch_size:
            raise ValueError(f"patch_size must divide img_size; got patch_size={patch_size}, img_size={img_size}")
        self.num_features = dim = check_positive_int(dim, "dim")
        depth, heads = check_positive_int(depth, "depth"), check_positive_int(heads, "heads")
        dim_head, mlp_dim = check_positive_int(dim_head, "dim_head"), check_positive_int(mlp_dim, "mlp_dim")
        dropout, emb_dropout = check_probability(dropout, "dropout"), check_probability(emb_dropout, "emb_dropout")
        self.num_patches = (self.img_size // self.patch_size) ** 2
        # Direct parameters come first in parameters(): pos_embedding is index 0 (see module docstring).
        self.pos_embedding = nn.Parameter(torch.zeros(1, self.num_patches + 1, dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.patch_embed = ShiftedPatchTokenizer(self.in_chans, self.patch_size, dim, spt_style)
        self.emb_drop = nn.Dropout(emb_dropout)
        self.blocks = nn.Sequential(*(Block(dim, heads, dim_head, mlp_dim, dropout) for _ in range(depth)))
        self.head_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, self.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """Normal(0, 0.02) truncated at 2 std for the embeddings and Linear weights, zero biases,
        unit LayerNorms (the LSA temperatures keep their log(dim_head ** -0.5) start). Skipped on
        the meta device."""
        if is_meta(self):
            return
        for tensor in (self.pos_embedding, self.cls_token):
            truncated_normal_(tensor, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                truncated_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def check_images(self, x: Tensor) -> None:
        super().check_images(x)
        if x.shape[2] != self.img_size or x.shape[3] != self.img_size:
            raise ValueError(f"SmallDataViT was built for {self.img_size}x{self.img_size} images (img_size); "
                             f"got {x.shape[2]}x{x.shape[3]}")

    def forward_features(self, x: Tensor) -> Tensor:
        """The CLS token's final state (B, dim) for images ``x`` (B, in_chans, img_size, img_size)."""
        self.check_images(x)
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.pos_embedding
        return self.blocks(self.emb_drop(tokens))[:, 0]

    def forward_head(self, features: Tensor) -> Tensor:
        """Logits (B, num_classes) from CLS features (B, dim): LayerNorm, then Linear."""
        return self.head(self.head_norm(features))

    def first_layer(self) -> nn.Linear:
        return self.patch_embed.proj

    def get_classifier(self) -> nn.Linear:
        return self.head

"""
The Monarch layer: x @ W for W = two block-diagonal factors with a fixed reshape-transpose permutation between
them (Dao et al. 2022), without ever building W, and its closed-form projection, the nearest Monarch matrix to a
dense W.

Like kronecker.py, this file ships inside a factored Hugging Face export (krony_to_gpt.py --keep_factors), so the
exported model computes exactly what ours does without krony installed.

Names: W is (in_features, out_features), as in x @ W, cut into `nblocks` blocks on each side: input block k is
the in_block = in_features / nblocks features k*in_block..., output block l the out_block = out_features / nblocks
outputs l, l + nblocks, l + 2*nblocks, ... (every nblocks-th one). Between the factors lie min(in_features,
out_features) middle features, mid_block per block, as Monarch's own MonarchLinear does for rectangular shapes:
the smaller side sets the rank.
- in_factor (nblocks, in_block, mid_block) maps input block k to middle block k.
- The permutation: the middle, laid out as (nblocks, mid_block), is read as (mid_block, nblocks) and transposed,
  so middle feature m = k*mid_block + j goes to block m % nblocks of the second factor, as its row m // nblocks.
- out_factor (nblocks, mid_block, out_block) maps middle block l to output block l.
So the part of W from input block k to output block l, an in_block x out_block matrix, is a sum over the middle
features that pass from k to l, each an outer product of a column of in_factor[k] and a row of out_factor[l]: a
matrix of rank mid_block / nblocks (when nblocks divides mid_block), and every such part is independent of the
others. The projection is therefore one truncated SVD per pair of blocks (Monarch's analogue of Van Loan's
rearrangement), and one block (nblocks=1) is an exact rank-min(in, out) factorization of any W.
"""

import math

import torch
import torch.nn as nn


def monarch_matmul(x: torch.Tensor, in_factor: torch.Tensor, out_factor: torch.Tensor,
                   bias: torch.Tensor | None) -> torch.Tensor:
    """Returns x (..., in_features) @ W + bias, of shape (..., out_features), in two batched matmuls, one per
    block-diagonal factor, with the permutations as reshapes between them."""
    nblocks, in_block, mid_block = in_factor.shape
    out_block = out_factor.shape[2]
    lead_shape = x.shape[:-1]
    x = x.reshape(-1, nblocks, in_block).transpose(0, 1)  # (k, n, in_block)
    n = x.shape[1]
    h = torch.bmm(x, in_factor)  # (k, n, mid_block)
    h = h.transpose(0, 1).reshape(n, mid_block, nblocks).permute(2, 0, 1)  # (l, n, r): m = r*nblocks + l
    y = torch.bmm(h, out_factor)  # (l, n, out_block)
    y = y.permute(1, 2, 0).reshape(n, out_block * nblocks)  # output s*nblocks + l
    if bias is not None:
        y = y + bias.to(y.dtype)  # under autocast, stay in the matmul's precision as nn.Linear does
    return y.view(*lead_shape, out_block * nblocks)


def monarch_weight(in_factor: torch.Tensor, out_factor: torch.Tensor) -> torch.Tensor:
    """Returns W (in_features, out_features), materialized: the product of the identity, for inits, exports and
    checks, never for a forward pass."""
    nblocks, in_block, _ = in_factor.shape
    eye = torch.eye(nblocks * in_block, dtype=in_factor.dtype, device=in_factor.device)
    return monarch_matmul(eye, in_factor, out_factor, None)


def middle_routes(nblocks: int, mid_block: int):
    """(l, r, t), each (nblocks, mid_block): where middle feature j of in_factor's block k goes, the second factor's
    block l and row r, and its index t among the middle features from block k to block l (the rank-t term of that
    pair of blocks)."""
    k = torch.arange(nblocks)[:, None]
    j = torch.arange(mid_block)[None, :]
    m = k * mid_block + j
    return m % nblocks, m // nblocks, (j // nblocks).expand(nblocks, mid_block)


def nearest_monarch(W: torch.Tensor, nblocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """vl for Monarch: returns (in_factor, out_factor) minimising ||W - W_hat||_F, one truncated SVD per pair of
    blocks (Eckart-Young on each independent part; see the top), each term split as sqrt(s) u, sqrt(s) v. The SVDs
    run in float64 on the CPU, each term's sign fixed so that the largest-magnitude entry of u is positive, so that
    the result is the same across LAPACKs."""
    in_features, out_features = W.shape
    in_block, out_block = in_features // nblocks, out_features // nblocks
    mid_block = min(in_block, out_block)
    parts = W.detach().to("cpu", torch.float64).reshape(nblocks, in_block, out_block, nblocks).permute(0, 3, 1, 2)
    U, S, Vh = torch.linalg.svd(parts, full_matrices=False)  # (k, l, in_block, q), (k, l, q), (k, l, q, out_block)
    sign = torch.where(U.gather(2, U.abs().argmax(dim=2, keepdim=True)) < 0, -1.0, 1.0).to(U.dtype)  # (k,l,1,q)
    root = S.sqrt()
    U, Vh = U * sign * root[:, :, None, :], Vh * sign.transpose(2, 3) * root[..., None]
    l, r, t = middle_routes(nblocks, mid_block)
    k = torch.arange(nblocks)[:, None]
    in_factor = U[k, l, :, t].permute(0, 2, 1)  # column j of block k: the term t of pair (k, l)
    out_factor = torch.empty(nblocks, mid_block, out_block, dtype=torch.float64)
    out_factor[l, r] = Vh[k, l, t, :]
    return in_factor.to(W.device, W.dtype), out_factor.to(W.device, W.dtype)


def entry_std(std: float, nblocks: int, mid_block: int) -> float:
    """The std of both factors' entries that gives W entries of std `std`: each entry of W sums about
    mid_block / nblocks products of two independent N(0, s^2) entries (at least one)."""
    return math.sqrt(std / math.sqrt(max(1.0, mid_block / nblocks)))


class MonarchLinear(nn.Module):
    """y = x @ W + b, W a Monarch matrix of `nblocks` blocks (in_features, out_features): nn.Linear's job with
    min(in, out) * (in + out) / nblocks weights and as many multiply-adds per token."""

    def __init__(self, in_features: int, out_features: int, nblocks: int, bias: bool = True):
        super().__init__()
        if nblocks < 1 or in_features % nblocks or out_features % nblocks:
            raise ValueError(f"nblocks={nblocks} must divide both sides of W, {in_features}x{out_features}")
        self.in_features, self.out_features = in_features, out_features
        in_block, out_block = in_features // nblocks, out_features // nblocks
        mid_block = min(in_block, out_block)
        self.in_factor = nn.Parameter(torch.empty(nblocks, in_block, mid_block))
        self.out_factor = nn.Parameter(torch.empty(nblocks, mid_block, out_block))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.reset_parameters()

    @property
    def nblocks(self) -> int:
        return self.in_factor.shape[0]

    def reset_parameters(self, std: float = 0.02) -> None:
        """Random factors whose W has entries of std `std`, as GPT-2 draws its dense matrices; a zero bias."""
        s = entry_std(std, self.nblocks, self.in_factor.shape[2])
        nn.init.normal_(self.in_factor, mean=0.0, std=s)
        nn.init.normal_(self.out_factor, mean=0.0, std=s)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return monarch_matmul(x, self.in_factor, self.out_factor, self.bias)

    def dense_weight(self) -> torch.Tensor:
        """W, materialized: the (in_features, out_features) matrix that x is multiplied by."""
        return monarch_weight(self.in_factor, self.out_factor)

    def extra_repr(self):
        (nblocks, in_block, mid_block), out_block = self.in_factor.shape, self.out_factor.shape[2]
        return (f"in={self.in_features}, out={self.out_features}, nblocks={nblocks}, "
                f"blocks={in_block}x{mid_block} then {mid_block}x{out_block}, bias={self.bias is not None}")

"""Symbol embeddings of a prior that know what each code stands for.

A prior that learns one free vector per code must find out from the token
statistics alone that two codes carry the same large-scale velocity, which a
budget of a few thousand training fields does not teach it. The tokenizer
already knows: its codebook vector is what the decoder turns into the region's
content. ``CodeEmbedding`` gives the prior that vector, standardised, through a
learned linear map, beside the free table; ``logits`` uses it on the output
side too (``add_scores``), so codes with similar vectors get similar scores from the start.
"""

import torch
import torch.nn as nn


class CodeEmbedding(nn.Embedding):
    """Embedding of `num_codes` codes and `extra` further symbols (FINER, MASK, ...), placed after the codes.

    With ``code_dim`` > 0 the codes' embedding adds a linear map of their
    tokenizer vectors (a buffer, set by ``set_vectors`` and saved with the
    prior), and ``add_scores`` scores codes by those vectors; the extra symbols get
    the free table only. With ``code_dim`` = 0 it is a plain ``nn.Embedding``.
    """

    def __init__(self, num_codes, dim, *, extra=0, code_dim=0):
        super().__init__(num_codes + extra, dim)
        if code_dim < 0:
            raise ValueError(f"code_dim must be non-negative, got {code_dim}")
        self.num_codes, self.code_dim = num_codes, code_dim
        if code_dim:
            self.register_buffer("vectors", torch.zeros(num_codes, code_dim))
            self.vector_in = nn.Linear(code_dim, dim, bias=False)
            self.vector_out = nn.Linear(dim, code_dim, bias=False)

    @torch.no_grad()
    def set_vectors(self, codebook_ND):
        """Take the tokenizer's (num_codes, code_dim) codebook, standardised per component."""
        if not self.code_dim:
            raise ValueError("this embedding was built without code vectors (code_dim=0)")
        if tuple(codebook_ND.shape) != (self.num_codes, self.code_dim):
            raise ValueError(f"expected a codebook of shape {(self.num_codes, self.code_dim)}, "
                             f"got {tuple(codebook_ND.shape)}")
        v = codebook_ND.float()
        self.vectors.copy_((v - v.mean(0)) / v.std(0).clamp(min=1e-6))

    def forward(self, symbols):
        x = super().forward(symbols)
        if not self.code_dim:
            return x
        is_code = symbols < self.num_codes
        vec = self.vectors[symbols.clamp(max=self.num_codes - 1)] * is_code[..., None]
        return x + self.vector_in(vec)

    def add_scores(self, logits, h):
        """`logits` (..., V >= num_codes) with the score of every code by its vector, from states h (..., dim),
        added to its first num_codes entries; `logits` itself without vectors."""
        if not self.code_dim:
            return logits
        scores = self.vector_out(h) @ self.vectors.T
        return torch.cat([logits[..., : self.num_codes] + scores, logits[..., self.num_codes:]], -1)

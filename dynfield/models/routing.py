"""How a DQ-VAE chooses the grain of every region: the learned router and the rule-based ones.

``GrainRouting`` is the part of ``DQVAE`` that turns encoder features (and,
for the rules, the padded field) into a grain map. It expects the model's
``num_levels``, ``factors``, ``target_ratios``, ``train_fine_ratio``, ``fixed_level``, ``router``
(the learned ``Router`` or None), ``router_mode``, ``seed``, ``periodic``,
``vorticity_channel``, ``_train_generator``, ``_pad`` and ``features``.
"""

import torch
import torch.nn.functional as F

from .allocation import rd_region_scores
from .router import (
    ROUTERS,
    budget_ratios,
    enstrophy_score,
    fineness_log_odds,
    gumbel_gate,
    random_score,
    rank_assign,
)


class GrainRouting:
    """The grain choice of a DQ-VAE (a mixin of ``DQVAE``; see the module docstring)."""

    def _route(self, x_pad, feats, mode, fine_ratio=None, level=None, temperature=None):
        """Choose the grain of every region.

        With a `temperature` the choice is the training one: the learned router
        samples by Gumbel-softmax, the random one draws fresh regions.
        Without, it is the inference one, and repeatable.

        Returns (grain (B, Hc, Wc), gate (B, K, Hc, Wc), logits or None). The
        gate is one-hot; it carries the straight-through gradient when the
        learned router samples.
        """
        K = self.num_levels
        coarse = feats[-1]
        B, _, Hc, Wc = coarse.shape
        if mode not in ROUTERS:
            raise ValueError(f"router must be one of {ROUTERS}, got {mode!r}")
        if temperature is None:
            fine_ratio = self.inference_fine_ratio(mode, fine_ratio)
        ratios = self.target_ratios if fine_ratio is None else budget_ratios(fine_ratio, self.target_ratios)
        logits = None
        if K == 1:
            grain = torch.zeros(B, Hc, Wc, dtype=torch.long, device=coarse.device)
        elif mode == "fixed":
            level = self.fixed_level if level is None else level
            if not 0 <= level < K:
                raise ValueError(f"fixed router level must index one of the {K} levels, got {level}")
            grain = torch.full((B, Hc, Wc), level, dtype=torch.long, device=coarse.device)
        elif mode == "learned":
            logits = self._router_logits(feats)
            if temperature is not None and fine_ratio is None:
                gate = gumbel_gate(logits, temperature)
                return gate.argmax(1), gate, logits
            if temperature is not None:
                # an exact budget on Gumbel-perturbed scores; straight-through gradient of the probabilities
                gumbel = -torch.empty_like(logits).exponential_().log()
                grain = rank_assign(fineness_log_odds(logits + temperature * gumbel), ratios)
                probs = logits.softmax(1)
                gate = F.one_hot(grain, K).permute(0, 3, 1, 2).to(probs.dtype) + probs - probs.detach()
                return grain, gate, logits
            grain = logits.argmax(1) if fine_ratio is None else rank_assign(fineness_log_odds(logits), ratios)
        else:
            # the random router draws fresh regions each training step, repeatable ones at inference
            generator = self._train_generator if temperature is not None else None
            grain = rank_assign(self._rule_scores(x_pad, mode, generator, feats), ratios)
        gate = F.one_hot(grain, K).permute(0, 3, 1, 2).to(coarse.dtype)
        return grain, gate, logits

    def inference_fine_ratio(self, mode, fine_ratio=None):
        """The fine ratio an inference routing by `mode` uses: `fine_ratio` if given, else None (the router's
        own choice), except for a learned router trained at exact ratios (``train_fine_ratio``): it only ranks
        regions, so it routes at the lowest ratio it was trained at."""
        if fine_ratio is None and mode == "learned" and self.train_fine_ratio is not None and self.num_levels > 1:
            return self.train_fine_ratio[0]
        return fine_ratio

    def _router_logits(self, feats):
        if self.router is None:
            raise ValueError(f"this model has no learned router (it was built with router={self.router_mode!r})")
        return self.router(feats)

    def _rule_scores(self, x_pad, mode, generator=None, feats=None):
        """(B, Hc, Wc) region scores of the rule-based routers ("random", "enstrophy", "rd")."""
        f_K = self.factors[-1]
        if mode == "rd":
            return rd_region_scores(self, x_pad, feats)
        if mode == "random":
            shape = (x_pad.shape[0], x_pad.shape[-2] // f_K, x_pad.shape[-1] // f_K)
            return random_score(shape, generator or torch.Generator().manual_seed(self.seed), x_pad.device)
        return enstrophy_score(x_pad, f_K, self.periodic, self.vorticity_channel)

    @torch.no_grad()
    def region_scores(self, x, router=None):
        """(B, Hc, Wc): the score by which an exact budget ranks the regions of fields (B, C, H, W).

        The top-scoring regions get the finer grains. learned: the router's
        ``fineness_log_odds``; random: the seeded draws of ``encode`` (the same
        for the same batch shape); enstrophy: each region's mean gradient energy
        (or squared vorticity); rd: the measured fall of the region's error
        from the coarsest grain to the finest (``rd_region_scores``).
        """
        mode = router or self.router_mode
        if self.num_levels < 2 or mode not in ("learned", "random", "enstrophy", "rd"):
            raise ValueError(f"no region scores for router {mode!r} on a model with factors {self.factors}")
        x_pad = self._pad(x)
        if mode == "learned":
            return fineness_log_odds(self._router_logits(self.features(x_pad)))
        return self._rule_scores(x_pad, mode)

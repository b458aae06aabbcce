"""Where does a tokenizer spend its codes? Grain allocation against the physics of the flow.

Every region of the coarsest grid carries one grain decision. For each region
this module gathers the grain a router chose, the score the router ranked it
by, and statistics of the flow inside it: mean enstrophy and palinstrophy, the
fraction of its area that is vortex-dominated by the Okubo-Weiss criterion,
mean kinetic energy and scalar-gradient energy (the indicators "enstrophy",
"palinstrophy", "vortex_fraction", "kinetic_energy", "scalar_gradient"). It
then measures how well each router's ranking follows each indicator:

- ROC-AUC of the router score for "region in the top q of the indicator",
  per field and averaged over the fields;
- precision and recall of the fine regions under an exact budget b (a
  fraction b of the regions finer than the coarsest grain) against those
  top-q regions, counts pooled over the fields;
- the fine/coarse ratio: the indicator's mean over the fine regions divided
  by its mean over the coarse ones;

for the learned router, the rate-distortion router (rd: the regions where finer
codes measurably remove the most error) and, as references, the random and
enstrophy routers;
and it splits the reconstruction error between vortex-dominated,
strain-dominated and background points.

What the indicators come from depends on the channels (``FlowDiagnostics.basis``):
- "velocity": u and v (any names in ``VELOCITY_COMPONENTS``); the vorticity is
  the vorticity channel when there is one, else the curl of the velocity.
- "vorticity": a vorticity channel and no velocity. On a periodic domain the
  velocity is recovered through the stream function; otherwise what needs it
  (Okubo-Weiss, kinetic energy, the error split) is left out.
- "gradient_energy": neither (a scalar field only, say); the one indicator is
  the gradient energy of all channels.

Derivatives assume the 2*pi box of ``dynfield.physics``. Every result here is a
ranking, a ratio of means, or a threshold relative to a per-field standard
deviation, so none depends on the true grid spacing.
"""

from .flow import (  # noqa: F401
    FlowDiagnostics,
    OW_THRESHOLD,
    REGION_TYPES,
    channel_roles,
    flow_diagnostics,
    gradient_energy,
    region_means,
    region_types,
    velocity_from_vorticity,
)
from .ranking import (  # noqa: F401
    QUANTILES,
    alignment,
    error_by_region,
    fine_coarse_ratio,
    mean_roc,
    middle,
    precision_recall,
    roc_auc,
    roc_curve,
    top_fraction,
    value_key,
)
from .study import (  # noqa: F401
    BUDGETS,
    GrainAnalysis,
    ROUTERS,
    analyse,
    load_fields,
    resolve_checkpoint,
)
from .report import (  # noqa: F401
    alignment_table,
    draw_grain_borders,
    error_table,
    figure_errors,
    figure_grain_maps,
    figure_okubo_weiss,
    figure_roc,
    figure_scores,
)

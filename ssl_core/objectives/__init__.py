"""Training objectives: one per module, one interface (``base.Objective``), one registry.

    module = PretrainModule.from_config(cfg, hf_model, pad_id, builder)   # every enabled objective
    loss, sums = OBJECTIVES["mlm"].from_config(cfg, hf_model, builder)(outputs, batch)

``outputs`` is what the encoder produced for the batch (:class:`EncoderOutputs`); ``batch`` is the
dict of tensors from the data stage. ``loss`` is this rank's share of the *global-batch mean*, scaled
so that DDP's gradient average gives exactly the gradient of the global mean (2 workers x B is
1 worker x 2B). ``sums`` are sums and counts (tensors), so ranks and log windows simply add.

The math of each objective is a function of logits or embeddings (``mlm_loss``, ``nsp_loss``,
``info_nce``) that needs no encoder, so it is tested on its own. A new objective is a module with
an ``Objective`` subclass, added to ``OBJECTIVES`` (here, or by a plugin or a test at run time).
"""
from ssl_core.objectives.base import EncoderOutputs, Objective
from ssl_core.objectives.contrastive import ContrastiveObjective, alignment_uniformity, info_nce
from ssl_core.objectives.mlm import MlmObjective, mlm_loss, mlm_metrics
from ssl_core.objectives.nsp import NspObjective, nsp_head, nsp_loss, nsp_metrics

OBJECTIVES: dict[str, type[Objective]] = {
    "mlm": MlmObjective,
    "nsp": NspObjective,
    "contrastive": ContrastiveObjective,
}

__all__ = ["OBJECTIVES", "EncoderOutputs", "Objective", "MlmObjective", "NspObjective",
           "ContrastiveObjective", "mlm_loss", "mlm_metrics", "nsp_head", "nsp_loss", "nsp_metrics",
           "info_nce", "alignment_uniformity"]

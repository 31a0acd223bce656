"""``label_smoothed_cross_entropy_slt``: fairseq's label-smoothed cross entropy under the name the plugin's commands
have always given. The ``translation_slt`` task logs sparsity and masked_nonzero under any criterion (this one logged
them itself before 2026-12-07, and ``--criterion cross_entropy`` showed none)."""
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)


@register_criterion("label_smoothed_cross_entropy_slt", dataclass=LabelSmoothedCrossEntropyCriterionConfig)
class LabelSmoothedCrossEntropySLTCriterion(LabelSmoothedCrossEntropyCriterion):
    pass

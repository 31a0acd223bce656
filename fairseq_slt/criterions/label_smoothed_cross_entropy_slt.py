"""Label-smoothed cross entropy that also logs the model's sparsity and masked-but-nonzero weights."""
from fairseq import metrics
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)

_KEYS = ("slt_weights", "slt_zeros", "slt_masked_nonzero", "slt_reports")


@register_criterion("label_smoothed_cross_entropy_slt", dataclass=LabelSmoothedCrossEntropyCriterionConfig)
class LabelSmoothedCrossEntropySLTCriterion(LabelSmoothedCrossEntropyCriterion):
    def forward(self, model, sample, reduce=True):
        loss, sample_size, logging_output = super().forward(model, sample, reduce=reduce)
        pruning = getattr(self.task, "pruning", None)
        if pruning is not None:
            logging_output.update(pruning.stats(training=model.training))
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        # counts are summed over workers and micro-batches; the ratios below undo that exactly
        sums = {key: sum(log.get(key, 0) for log in logging_outputs) for key in _KEYS}
        if sums["slt_weights"] > 0:
            metrics.log_scalar("sparsity", sums["slt_zeros"] / sums["slt_weights"], weight=0, round=4, priority=800)
            metrics.log_scalar("masked_nonzero", sums["slt_masked_nonzero"] / max(sums["slt_reports"], 1),
                               weight=0, round=2, priority=810)

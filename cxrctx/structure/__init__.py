"""structure-reports: findings and impression in the SRRG layout, each answer checked for
faithfulness against its source text before it is written."""

from cxrctx.structure.run import structure_reports

__all__ = ["structure_reports"]

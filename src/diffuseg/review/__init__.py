"""Review: explanations, modes of the samples, the audit trail and the workflow report."""

"""Evaluation: scores of a prediction folder against the raters, and the HTML report."""

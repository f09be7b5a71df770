"""Scoring models: streamed evaluation, exact metrics and plots."""

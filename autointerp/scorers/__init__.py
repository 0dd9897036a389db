"""Scorers beyond autointerp.score: the scorer contract and registry, embedding, surprisal and the
output-side (intervention) scorers."""

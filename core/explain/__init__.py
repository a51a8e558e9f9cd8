"""Explanations: informativeness maps, modality weights, attributions, masking, comparisons."""

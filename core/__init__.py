"""mmx core: data, models, training, explanation and figures for multimodal classification.

Nothing in this package imports Streamlit; the dashboard and ``train.py`` build on it.
"""

"""Offline half: datasets, training, evaluation and checkpoint export."""

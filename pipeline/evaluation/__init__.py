"""Evaluation of exported models and their samples: NELBO, Gen-PPL, diversity, reports."""

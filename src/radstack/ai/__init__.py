"""AI: fracture detection models, their training, evaluation and inference."""

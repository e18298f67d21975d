"""Offline studies on cached exit logits or small trainings: `python -m bench.studies.<name>`."""

"""Throughput benchmark: our trial loop against transformers.Trainer + peft (python -m bench)."""

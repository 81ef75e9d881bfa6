"""ranksweep: progressive LoRA rank sweeps (which rank r, on which weight matrices)."""

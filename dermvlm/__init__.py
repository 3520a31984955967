"""dermvlm: an open dermatology vision-language toolkit (SynthDerm, CLIP alignment, VLM, eval)."""
__version__ = "0.1.0"

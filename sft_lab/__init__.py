"""sft-lab: supervised fine-tuning ablations, from one command to a table."""

__version__ = "0.1.0"

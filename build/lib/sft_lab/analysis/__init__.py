"""From finished run records to ablation tables: collect -> statistics -> table -> render / plot."""

"""Statistical studies: the tables' tests on simulated and real runs (A/A rates, power)."""

"""Models and what trains them: the baseline GPT-2, attention variants, the record's model, losses
and their kernels, FP8, Muon and the learning-rate schedules."""

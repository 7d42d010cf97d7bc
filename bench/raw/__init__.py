"""Raw baselines: the smallest programs on shop's stack doing the same work as a scenario."""

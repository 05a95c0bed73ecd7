"""Small SD1.5-shaped random models and a synthetic stick-figure clip, for tests, the self-check and CPU benchmarks."""

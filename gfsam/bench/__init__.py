"""Speed benchmarks of the library (`python -m gfsam benchmark`): per-stage times and golden
cases (`speed`), re-prediction after a correction (`repredict`), GPU throughput (`gpu`).
Random weights measure speed only; every mask they produce is meaningless."""

"""The operator command line `cdp`: sources, tokens, pipeline status, DLQ replay, imports."""

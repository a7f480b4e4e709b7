"""The reprogramming engine: programs, output mappings, losses, zeroth-order estimators,
optimisers and the ask/tell trainer. It imports numpy and torch only, never the service."""

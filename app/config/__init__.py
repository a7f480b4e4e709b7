"""Configuration: the job spec, its defaults, and the service's settings."""

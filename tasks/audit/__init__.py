"""Judge audit: how far the judge can be trusted (position, verbosity, self-preference, second judge, humans)."""

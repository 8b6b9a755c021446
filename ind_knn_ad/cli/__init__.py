"""The two commands: arguments, preflight checks, exit codes, memory limits, environment."""

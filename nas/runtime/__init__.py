"""What every stage stands on: one-line errors, the command-line plumbing, checkpoints and
run folders, multi-process helpers, devices and named seed streams. Imports nothing else
of the toolkit."""

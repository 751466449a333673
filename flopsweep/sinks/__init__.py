"""Where results go: the job folder (always, first), then MLflow; and reading them back. Nothing here imports torch
or measures."""

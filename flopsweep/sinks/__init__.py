"""Where results go: the job folder (always, first), then tracking stores."""

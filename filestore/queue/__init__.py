"""The durable remote-work queue: uploads after a cool-down, and remote deletes."""

"""The pure core of skiff: config and validation, snapshots, plans, balancing, framing. No sockets here."""

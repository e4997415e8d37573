"""The worker process: listeners, routing table, connect with failover, relay."""

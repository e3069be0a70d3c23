"""The running half: the failover engine, the two transports and what they use (health, logs, TLS,
connection failures, the attempt directory)."""

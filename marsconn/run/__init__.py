"""The running half: the failover engine, the two transports and what they use.

Health, logs, connection failures, the attempt directory, pre-flight checks, the result.
Transports import run.job, never the engine.
"""

"""The sans-I/O state machines of both protocols: bytes and messages in, events and verdicts out.

Imports only marsconn.core."""
